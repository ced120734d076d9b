"""Run folders: where every training job keeps its config, metrics, plots and checkpoints.

RUN/config.json        the resolved configuration of the job
RUN/metrics.jsonl      one JSON object per logged event (training and evaluation)
RUN/*.png              plots drawn from metrics.jsonl
RUN/samples.txt        sample generations, one line each ("[step N] ..."), appended as made
RUN/checkpoints/       resumable training checkpoints (see gptlab.checkpoints)
RUN/model/             the final model folder
RUN/results.json       the final results, written last: its presence means the job finished

The names are declared here once; `is_complete` and `has_run` are the two questions every
resumable job and pipeline stage asks of a folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError
from gptlab.io import append_jsonl, append_line, atomic_write, atomic_write_json, read_jsonl

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.txt"
RESULTS = "results.json"
MODEL = "model"
SAMPLE_STEP = re.compile(r"\[step (\d+)\] ")


def is_complete(folder: Path) -> bool:
    """Whether a job (or pipeline stage) finished in `folder`: results.json is written
    atomically as its very last step, so a killed job is never taken for a finished one."""
    return (folder / RESULTS).is_file()


def has_run(folder: Path) -> bool:
    """Whether `folder` holds a started run (finished or not) that --resume continues."""
    return (folder / CONFIG).is_file()


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def prepare(self, config: dict[str, Any], resume: bool) -> None:
        """Create the folder (refusing to mix a new run into an old one) and write config.json."""
        if self.path.exists() and not self.path.is_dir():
            raise GptlabError(f"{self.path}: exists and is not a folder")
        if not resume and self.path.is_dir() and has_run(self.path):
            raise GptlabError(
                f"{self.path}: already holds a run; pass --resume to continue it or choose "
                "another --out"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path / CONFIG, config)
        except PermissionError:
            raise GptlabError(f"{self.path}: not writable") from None

    def log(self, record: dict[str, Any]) -> None:
        append_jsonl(self.metrics_path, record)

    def add_sample(self, step: int, text: str) -> None:
        """Append a sample to samples.txt as soon as it is made, on one line (newlines shown
        as \\n), so that an interruption loses none and a resume can cut the file at a step."""
        flat = text.replace("\r", "\\r").replace("\n", "\\n")
        append_line(self.path / SAMPLES, f"[step {step}] {flat}")

    def metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl (gptlab.io.read_jsonl: a last line cut by a crash is
        skipped)."""
        return read_jsonl(self.metrics_path)

    def truncate_metrics(self, step: int) -> None:
        """Forget records logged after `step`: that of the checkpoint being resumed, or 0 in a
        new run (an attempt that failed before its first checkpoint may have logged some)."""
        if not self.metrics_path.exists():
            return
        kept = [r for r in self.metrics() if r.get("step", 0) <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write(self.metrics_path, lambda p: p.write_text(text, encoding="utf-8"))

    def truncate_samples(self, step: int) -> None:
        """Forget samples made after `step`, as `truncate_metrics` (and a line cut by a kill,
        which is always of a later step: a sample is written before its checkpoint), so a
        resumed run's samples.txt is an uninterrupted run's."""

        def kept(line: str) -> bool:
            match = SAMPLE_STEP.match(line)
            return line.endswith("\n") and match is not None and int(match[1]) <= step

        path = self.path / SAMPLES
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            text = "".join(filter(kept, lines))
            atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))

    def plot(
        self, filename: str, series: dict[str, tuple[str, str]], ylabel: str, title: str
    ) -> Path:
        """Plot metrics: `series` maps a legend label to (event kind, field), x = step."""
        import matplotlib

        matplotlib.use("Agg")  # never needs a display
        import matplotlib.pyplot as plt

        records = self.metrics()
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, (kind, key) in series.items():
            pts = [(r["step"], r[key]) for r in records if r.get("kind") == kind and key in r]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=label, marker="o" if len(pts) < 30 else None, markersize=3)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out = self.path / filename
        atomic_write(out, lambda p: fig.savefig(p, format="png", dpi=110))
        plt.close(fig)
        return out
