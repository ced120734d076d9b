"""The runs browser's JSON API (`gptlab serve --runs DIR`): every run folder under DIR, its
settings, state and progress, its metrics for live curves, its stages and their timings, its
report.md rendered safely, and its plots.

A run folder is a folder holding a run's config.json (gptlab.runs): a single job's, a
pipeline's, or a pipeline stage's inside it (listed with its `parent`). Only files under DIR
are ever read: a path that names `..`, an absolute path, an encoded separator or dot, or a
symbolic link that leads out of DIR is refused before any file is opened.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from gptlab.runs import CONFIG, METRICS, RESULTS, is_complete
from gptlab.serve.engine import ApiError
from gptlab.serve.markdown import render_markdown
from gptlab.settings import STAGES

STALE_SECONDS = 120  # an unfinished run that has written nothing for this long has stopped
MAX_DEPTH = 5  # folders below DIR searched for runs
SKIPPED = {"checkpoints", "model", "__pycache__"}  # never hold a run of their own
MAX_METRICS_BYTES = 4 << 20  # the most of metrics.jsonl one request returns
MAX_REPORT_BYTES = 2 << 20
MAX_IMAGE_BYTES = 16 << 20
IMAGES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
ENCODED = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)


def safe_path(root: Path, request: Request, rel: str) -> Path:
    """`rel` (a path below `root`, '' for root itself) resolved, refused (400) when it is not
    a plain relative path and (404) when it does not exist or resolves outside `root`."""
    if ENCODED.search(request.scope.get("raw_path", b"").decode("latin-1")):
        raise ApiError(400, "path: encoded dots and separators are not allowed")
    parts = rel.split("/") if rel else []
    if rel.startswith("/") or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise ApiError(400, f"path {rel!r}: only plain relative paths under the runs folder")
    base = root.resolve()
    target = base.joinpath(*parts).resolve()
    if not target.is_relative_to(base) or not target.exists():
        raise ApiError(404, f"{rel or '.'}: no such file in the runs folder")
    return target


def read_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing, unreadable or no object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_records(path: Path, offset: int = 0, limit: int = MAX_METRICS_BYTES) -> tuple[list, int]:
    """The JSON records of the complete lines of `path` from byte `offset` (at most `limit`
    bytes), and the offset to read on from. A line still being written (no newline yet) is
    left for the next read; an unreadable line is skipped."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(limit)
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records, offset + end


def tail_records(path: Path, size: int = 65536) -> list[dict[str, Any]]:
    """The last records of `path` (its final `size` bytes): enough for a run's progress."""
    try:
        start = max(0, path.stat().st_size - size)
    except OSError:
        return []
    records, _ = read_records(path, start, size)
    return records if start == 0 else records[1:]  # the first may be a line's end only


def is_run(folder: Path) -> dict[str, Any] | None:
    """The config of the run in `folder`, or None: a model folder's config.json (it has a
    "format") is no run, nor one without a task or metrics."""
    config = read_object(folder / CONFIG)
    if config is None or "format" in config:
        return None
    if "task" in config or (folder / METRICS).is_file():
        return config
    return None


def find_runs(root: Path) -> dict[str, dict[str, Any]]:
    """Every run folder under `root` (itself included), by its path relative to `root`
    ('' for root), with its config; symbolic links are not followed."""
    found: dict[str, dict[str, Any]] = {}
    base = root.resolve()
    for here, dirs, _ in os.walk(base):
        folder = Path(here)
        depth = len(folder.relative_to(base).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED)
        if depth >= MAX_DEPTH:
            dirs[:] = []
        config = is_run(folder)
        if config is not None:
            found[folder.relative_to(base).as_posix().lstrip(".")] = config
    return found


def parent_of(rid: str, ids: set[str]) -> str | None:
    """The nearest run folder holding run `rid`, if any."""
    parts = rid.split("/") if rid else []
    for k in range(len(parts) - 1, -1, -1):
        candidate = "/".join(parts[:k])
        if candidate in ids:
            return candidate
    return None


def updated(folder: Path) -> float:
    """When anything directly in `folder` was last written."""
    times = [0.0]
    with os.scandir(folder) as entries:
        for e in entries:
            if e.is_file(follow_symlinks=False):
                times.append(e.stat(follow_symlinks=False).st_mtime)
    return max(times)


def total_steps(config: dict[str, Any], records: list[dict[str, Any]]) -> int | None:
    """A training job's step count: --max-steps, or its epochs times the steps per epoch that
    config.json or an accuracy record (step and epoch) tells."""
    train = config.get("settings", {}).get("train", {})
    if not isinstance(train, dict):
        return None
    if train.get("max_steps"):
        return int(train["max_steps"])
    per_epoch = config.get("data", {}).get("steps_per_epoch")
    for r in records:
        if r.get("kind") == "accuracy" and r.get("epoch"):
            per_epoch = per_epoch or r["step"] / r["epoch"]
    epochs = train.get("epochs")
    return round(epochs * per_epoch) if epochs and per_epoch else None


def stage_ended(folder: Path) -> str | None:
    """How a pipeline stage ended ("done", "skipped"), or None while it has not."""
    if is_complete(folder):
        return "done"
    return "skipped" if (folder / "skipped.json").is_file() else None


def stage_states(folder: Path, running: bool) -> list[dict[str, Any]]:
    """A pipeline's stages: done, skipped, running (the first unfinished one of a live run) or
    not run, with their wall seconds (gptlab.pipeline.stage_seconds)."""
    from gptlab.pipeline import stage_seconds  # with torch: only for a pipeline's page

    seconds = stage_seconds(folder)
    stages, current = [], running
    for name in STAGES:
        status = stage_ended(folder / name) or "not run"
        if status == "not run" and current and (folder / name).is_dir():
            status, current = "running", False
        stages.append({"name": name, "status": status, "seconds": seconds.get(name)})
    return stages


def folder_of(root: Path, rid: str) -> Path:
    """The folder of run `rid`, a path found under `root` (no user input)."""
    return root.resolve().joinpath(*rid.split("/")) if rid else root.resolve()


def summary(root: Path, rid: str, config: dict[str, Any], children: list[str]) -> dict[str, Any]:
    """A run's line in the list: task, state, how far it got, when it last wrote (a pipeline
    writes in its stages' folders, its `children`)."""
    folder = folder_of(root, rid)
    last = max(updated(f) for f in [folder, *(folder_of(root, c) for c in children)])
    done = is_complete(folder)
    state = "done" if done else "running" if time.time() - last < STALE_SECONDS else "stopped"
    task = str(config.get("task", "run"))
    out: dict[str, Any] = {"id": rid, "name": folder.name, "task": task, "state": state}
    out |= {"updated": last, "report": (folder / "report.md").is_file(), "children": children}
    if task == "pipeline":
        ended = sum(stage_ended(folder / name) is not None for name in STAGES)
        out["progress"] = f"{ended} of {len(STAGES)} stages"
        return out
    records = tail_records(folder / METRICS)
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    out["step"] = steps[-1] if steps else 0
    out["total"] = total_steps(config, records)
    out["progress"] = f"step {out['step']}" + (f" of {out['total']}" if out["total"] else "")
    return out


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every run under `root`, newest first, the runs inside another one after the others."""
    runs = find_runs(root)
    parents = {rid: parent_of(rid, set(runs)) for rid in runs}
    out = []
    for rid, config in runs.items():
        children = [c for c, p in parents.items() if p == rid]
        out.append({**summary(root, rid, config, children), "parent": parents[rid]})
    return sorted(out, key=lambda r: (r["parent"] is not None, -r["updated"], r["id"]))


def run_detail(root: Path, request: Request, rid: str) -> dict[str, Any]:
    """One run: its summary, config.json, results.json, plots, and a pipeline's stages."""
    folder = safe_path(root, request, rid)
    config = is_run(folder)
    if config is None:
        raise ApiError(404, f"{rid or '.'}: no run there")
    inner = find_runs(folder)
    children = [f"{rid}/{c}".lstrip("/") for c in inner if c and parent_of(c, set(inner)) == ""]
    detail = summary(root, rid, config, children)
    detail["config"] = config
    detail["results"] = read_object(folder / RESULTS)
    images = [p.name for p in folder.iterdir() if p.suffix.lower() in IMAGES]
    detail["images"] = sorted(f"{rid}/{name}".lstrip("/") for name in images)
    if detail["task"] == "pipeline":
        detail["stages"] = stage_states(folder, detail["state"] == "running")
    return detail


def router(root: Path) -> APIRouter:
    """The routes of the runs browser over the run folders under `root`."""
    api = APIRouter(prefix="/runs/api")

    @api.get("/list")
    def runs_list() -> dict[str, Any]:
        return {"root": root.resolve().name, "runs": list_runs(root)}

    @api.get("/run/{path:path}")
    def runs_run(request: Request, path: str) -> dict[str, Any]:
        return run_detail(root, request, path)

    @api.get("/metrics/{path:path}")
    def runs_metrics(
        request: Request, path: str, offset: Annotated[int, Query(ge=0)] = 0
    ) -> dict[str, Any]:
        folder = safe_path(root, request, path)
        records, end = read_records(folder / METRICS, offset)
        return {"records": records, "offset": end}

    @api.get("/report/{path:path}")
    def runs_report(request: Request, path: str) -> dict[str, Any]:
        report = safe_path(root, request, f"{path}/report.md".lstrip("/"))
        if report.stat().st_size > MAX_REPORT_BYTES:
            raise ApiError(413, f"{path}/report.md: over {MAX_REPORT_BYTES} bytes")
        text = report.read_text(encoding="utf-8", errors="replace")
        return {"html": render_markdown(text, base=path)}

    @api.get("/file/{path:path}")
    def runs_file(request: Request, path: str) -> Response:
        file = safe_path(root, request, path)
        kind = IMAGES.get(file.suffix.lower())
        if kind is None or not file.is_file():
            raise ApiError(404, f"{path}: only the runs' images are served")
        if file.stat().st_size > MAX_IMAGE_BYTES:
            raise ApiError(413, f"{path}: over {MAX_IMAGE_BYTES} bytes")
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
        return Response(file.read_bytes(), media_type=kind, headers=headers)

    return api
