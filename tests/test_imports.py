"""The import graph: importing gptlab changes nothing in the process, and gptlab's modules
import each other one way (no cycle, checked on the source with ast)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import gptlab

SRC = Path(gptlab.__file__).parent

PROBE = """
import json, os, pkgutil, importlib, sys
import numpy as np

def freed_is_returned():
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    x = np.ones(16 * 2**20, dtype=np.float32)  # 64 MB through malloc
    held = rss()
    del x
    return held - rss() > 60 * 2**20

env = dict(os.environ)
import gptlab
torch_after_gptlab = "torch" in sys.modules
import torch
threads = torch.get_num_threads(), torch.get_num_interop_threads()
for m in pkgutil.walk_packages(gptlab.__path__, "gptlab."):
    if m.name != "gptlab.__main__":  # runs the CLI
        importlib.import_module(m.name)
print(json.dumps({
    "torch_after_gptlab": torch_after_gptlab,
    "env_changed": sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)),
    "threads_changed": threads != (torch.get_num_threads(), torch.get_num_interop_threads()),
    "freed_is_returned": freed_is_returned(),
}))
"""


def test_importing_every_module_leaves_the_process_as_it_was() -> None:
    """No environment variable set, no thread count changed, malloc untuned (a freed 64 MB
    buffer still goes back to the kernel), and `import gptlab` alone loads no torch."""
    env = {"PATH": "/usr/bin:/bin", "GPTLAB_MEMORY_TUNING": "1"}  # tuning would be allowed
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == {
        "torch_after_gptlab": False,
        "env_changed": [],
        "threads_changed": False,
        "freed_is_returned": True,
    }


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The gptlab modules `path` imports, anywhere in the file (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from gptlab import x` imports module gptlab.x where there is one.
            names = [f"{node.module}.{a.name}" for a in node.names]
            if not all(name in modules for name in names):
                names.append(node.module)
        else:
            continue
        for name in names:
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules:
                found.add(name)
    return found


def test_imports_form_no_cycle() -> None:
    """Every module can be ordered so that it imports only modules before it."""
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {m: imported_modules(p, set(files)) - {m} for m, p in files.items()}
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", "import cycle: " + " -> ".join([*path, m])
        state[m] = "open"
        for dep in sorted(graph[m]):
            visit(dep, [*path, m])
        state[m] = "done"
        order.append(m)

    for m in sorted(graph):
        visit(m, [])
    assert len(order) == len(files) > 40
    # Downward: the model and the CPU speed code never reach up to jobs, serving or the CLI.
    low = {"gptlab.model", "gptlab.cpu.decode", "gptlab.cpu.head_loss", "gptlab.settings"}
    high = ("gptlab.cli", "gptlab.commands", "gptlab.jobs", "gptlab.serve", "gptlab.pipeline")
    for m in low:
        assert not any(dep.startswith(high) for dep in graph[m]), (m, graph[m])
