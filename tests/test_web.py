"""The web page of `gptlab serve`, in a real browser: Debian's chromium driven by playwright,
against a real `gptlab serve --model M --runs DIR` subprocess. One browser for the module.

Screenshots go to $GPTLAB_WEB_SCREENSHOTS (default: a temporary folder), one per view.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gptlab.generation import generate_text
from gptlab.hub import resolve_model
from gptlab.respond import instruct_sampling
from gptlab.runs import RunDir
from gptlab.serve.service import messages_to_prompt
from gptlab.settings import Sampling
from tests.serve_process import gptlab_command, gptlab_env, save_tiny_model, served

CHROMIUM = os.environ.get("GPTLAB_CHROMIUM", "/usr/bin/chromium")
MAX_TOKENS = 450  # the server's limit; the tiny model's context is 512
SYSTEM = "Be brief."


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, or a failure saying how to install it (the tests never skip silently)."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"the browser tests need chromium at {CHROMIUM}: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("GPTLAB_WEB_SCREENSHOTS")
    out = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("web") / "tiny")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def server(model_dir: Path, runs_dir: Path) -> Iterator[tuple[str, list[str]]]:
    """(URL, the server's output lines so far)."""
    log: list[str] = []
    extra = ("--runs", str(runs_dir), "--max-tokens", str(MAX_TOKENS))
    with served(model_dir, *extra, log=log) as (url, _):
        yield url, log


class Page:
    """A browser page on the server, collecting its console errors and uncaught exceptions."""

    def __init__(self, browser: Any, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1100, "height": 760})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)

    def text(self, selector: str) -> str:
        return self.page.locator(selector).text_content() or ""

    def close(self, allowed: str | None = None) -> None:
        """Close it; the console must have no error (other than those matching `allowed`)."""
        self.context.close()
        left = [e for e in self.errors if allowed is None or not re.search(allowed, e)]
        assert not left, left


def until(check: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    """Poll `check` until it returns something true (the page's CSP forbids playwright's
    string predicates, which need eval)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


def greedy(model: Any, turns: list[tuple[str, str]], n: int) -> str:
    """gptlab's own generation of the reply to `turns` folded into the Alpaca template, as the
    server does for a model without a chat template."""
    s = instruct_sampling(Sampling(max_new_tokens=n))
    return generate_text(model, [messages_to_prompt(turns)], s)[0]


def ask(p: Page, text: str) -> str:
    """Send `text` from the page and wait for the whole streamed reply."""
    n = p.page.locator(".msg.assistant").count()
    p.page.fill("#prompt", text)
    p.page.press("#prompt", "Enter")
    until(lambda: p.page.locator(".msg.assistant").count() == n + 1, what="a reply bubble")
    until(lambda: p.page.is_enabled("#send"), 60, "the end of the reply")
    return p.page.locator(".msg.assistant").nth(n).text_content() or ""


def chat_settings(p: Page, temperature: str, max_tokens: int) -> None:
    until(lambda: p.page.is_visible("#chat"), what="the chat")
    p.page.fill("#system", SYSTEM)
    p.page.fill("#temperature", temperature)
    p.page.fill("#max-tokens", str(max_tokens))


# ---- chat ------------------------------------------------------------------------------------


def test_streamed_reply_is_the_greedy_text_and_the_second_turn_holds_the_first(
    browser: Any, server: tuple[str, list[str]], model_dir: Path, shots: Path
) -> None:
    url, _ = server
    p = Page(browser, url)
    sent: list[dict] = []
    p.page.on(
        "request",
        lambda r: r.url.endswith("/v1/chat/completions") and sent.append(json.loads(r.post_data)),
    )
    chat_settings(p, "0", 16)
    first = ask(p, "Name three colors.")
    turns = [("system", SYSTEM), ("user", "Name three colors.")]
    model, _ = resolve_model(model_dir)
    assert first and first == greedy(model, turns, 16)
    # The same as the API's own, non-streamed answer.
    body = {"model": "tiny", "messages": [{"role": r, "content": c} for r, c in turns]}
    body |= {"temperature": 0, "max_tokens": 16}
    done = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    assert first == done["choices"][0]["message"]["content"]

    second = ask(p, "And two more?")
    turns += [("assistant", first), ("user", "And two more?")]
    assert [(m["role"], m["content"]) for m in sent[-1]["messages"]] == turns
    assert sent[-1]["stream"] is True and sent[-1]["temperature"] == 0
    assert second == greedy(model, turns, 16)
    assert p.page.locator(".msg").count() == 4
    p.page.screenshot(path=shots / "chat.png")
    p.close()


def test_stop_ends_the_generation_on_the_server(
    browser: Any, server: tuple[str, list[str]]
) -> None:
    url, log = server
    p = Page(browser, url)
    chat_settings(p, "0", MAX_TOKENS)
    p.page.fill("#prompt", "Tell me a very long story.")
    p.page.press("#prompt", "Enter")
    bubble = p.page.locator(".msg.assistant").last
    until(lambda: bubble.text_content(), what="the first words")
    p.page.click("#stop")
    until(lambda: "stopped" in (bubble.get_attribute("class") or ""), what="the stop")
    shown = bubble.text_content() or ""
    line = until(
        lambda: next((x for x in log if "cancelled by its client" in x), None), 10, "the log"
    )
    n, limit = map(int, re.search(r"after (\d+) of (\d+) tokens", line).groups())
    assert limit == MAX_TOKENS and n < MAX_TOKENS, line
    time.sleep(0.5)  # the page shows no more text: the stream is closed
    assert bubble.text_content() == shown and p.page.is_enabled("#send")
    p.close()


def test_model_picker_and_hostile_text_show_as_text(
    browser: Any, server: tuple[str, list[str]]
) -> None:
    """Replies, errors and the user's own words never become markup. The server serves one
    model and a random model cannot be made to write a tag, so this test alone replaces two
    answers in the browser: the model list (two models) and one streamed reply."""
    url, _ = server
    p = Page(browser, url)
    hostile = '<img src=x onerror="window.__xss=1">'
    models = {"object": "list", "data": [{"id": "tiny"}, {"id": hostile}]}
    p.page.route("**/v1/models", lambda route: route.fulfill(json=models))
    p.page.reload()
    until(lambda: p.page.is_visible("#model-label"), what="the model picker")
    p.page.select_option("#model", hostile)
    p.page.fill("#prompt", "<script>window.__xss=2</script>")
    p.page.press("#prompt", "Enter")
    # The real server refuses the unknown model; its message quotes the name.
    until(lambda: p.page.is_visible("#error"), what="the error")
    assert hostile in p.text("#error") and "not found" in p.text("#error")
    assert p.page.input_value("#prompt") == "<script>window.__xss=2</script>"  # given back

    p.page.select_option("#model", "tiny")
    reply = "<script>window.__xss=3</script><b>bold</b>"
    chunk = {"choices": [{"index": 0, "delta": {"content": reply}, "finish_reason": None}]}
    sse = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"
    p.page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(body=sse, content_type="text/event-stream"),
    )
    assert ask(p, "<script>window.__xss=2</script>") == reply
    assert p.text(".msg.user") == "<script>window.__xss=2</script>"
    assert p.page.locator("#messages script, #messages b, #error img").count() == 0
    assert p.page.evaluate("window.__xss") is None
    p.close(allowed="status of 404")  # the refused model


# ---- runs ------------------------------------------------------------------------------------


def write_config(folder: Path, config: dict[str, Any]) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")


def append(folder: Path, text: str) -> None:
    with open(folder / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(text)


def metrics(steps: range, floor: float = 0.0) -> str:
    lines = [{"kind": "train", "step": s, "loss": floor + 5 / s} for s in steps]
    lines += [{"kind": "eval", "step": s, "val_loss": floor + 6 / s} for s in steps if s % 5 == 0]
    return "".join(json.dumps(r) + "\n" for r in sorted(lines, key=lambda r: r["step"]))


def test_runs_list_shows_a_new_run_and_its_curve_grows(
    browser: Any, server: tuple[str, list[str]], runs_dir: Path, shots: Path
) -> None:
    url, _ = server
    p = Page(browser, url + "/#runs")
    until(lambda: p.page.is_visible("#runs"), what="the runs view")
    live = runs_dir / "live"
    write_config(live, {"task": "pretrain", "settings": {"train": {"max_steps": 40}}})
    append(live, metrics(range(1, 11), floor=1.0))
    row = p.page.locator('#run-list tr[data-id="live"]')
    until(lambda: row.count() == 1, what="the new run in the list")
    assert "running" in row.text_content() and "step 10 of 40" in row.text_content()
    row.click()
    chart = p.page.locator("#loss-chart")
    until(lambda: chart.get_attribute("data-points") == "12", what="the first points")
    line = json.dumps({"kind": "train", "step": 11, "loss": 1.45})
    append(live, line[:20])  # a line still being written is not read yet
    time.sleep(1.5)
    assert chart.get_attribute("data-points") == "12"
    append(live, line[20:] + "\n" + metrics(range(12, 21), floor=1.0))
    until(lambda: chart.get_attribute("data-points") == "24", what="the curve growing")
    until(lambda: "step 20 of 40" in p.text("#run-state"), what="the progress")
    p.page.screenshot(path=shots / "runs-live.png")
    p.close()


def finished_run(folder: Path) -> None:
    """A finished job: settings, metrics, results, a plot drawn by gptlab, and a report that
    holds markup a browser must not run."""
    hostile = "<script>window.__xss=4</script>"
    settings = {"train": {"max_steps": 20, "lr": 0.001}, "note": hostile}
    write_config(folder, {"task": "classify", "settings": settings})
    append(folder, metrics(range(1, 21)))
    acc = [{"kind": "accuracy", "step": s, "epoch": s / 10, "val_acc": s / 25} for s in (10, 20)]
    append(folder, "".join(json.dumps(r) + "\n" for r in acc))
    RunDir(folder).plot("loss.png", {"train": ("train", "loss")}, "loss", "loss")
    (folder / "results.json").write_text(json.dumps({"task": "classify", "test_accuracy": 0.8}))
    report = f"""# Report of done

| metric | value |
|---|---|
| test_accuracy | 0.8 |
| evil | {hostile} |

![done: loss](loss.png)

{hostile}
<img src=x onerror="window.__xss=5">
[a link](javascript:window.__xss=6)

```
code <b>here</b>
```
"""
    (folder / "report.md").write_text(report, encoding="utf-8")


def test_report_rendered_and_runs_overlaid_with_file_text_shown_as_text(
    browser: Any, server: tuple[str, list[str]], runs_dir: Path, shots: Path
) -> None:
    url, _ = server
    finished_run(runs_dir / "done")
    p = Page(browser, url + "/#runs")
    row = p.page.locator('#run-list tr[data-id="done"]')
    until(lambda: row.count() == 1, what="the finished run")
    assert "done" in row.text_content() and "step 20 of 20" in row.text_content()
    row.click()
    until(lambda: p.page.locator("#report h1").count(), what="the report")
    assert p.text("#report h1") == "Report of done"
    assert p.page.locator("#report td").nth(1).text_content() == "0.8"
    assert "<script>window.__xss=4</script>" in p.text("#report")
    assert '<img src=x onerror="window.__xss=5">' in p.text("#report")
    assert p.text("#report pre") == "code <b>here</b>"
    img = p.page.locator("#report img")
    until(lambda: img.evaluate("i => i.complete && i.naturalWidth > 0"), what="the plot")
    assert "<script>window.__xss=4</script>" in p.text("#settings")
    assert p.page.locator("#run script, #report b, #report a").count() == 0
    assert p.page.evaluate("window.__xss") is None
    until(lambda: p.page.is_visible("#acc-figure"), what="the accuracy curve")
    assert p.page.get_attribute("#acc-chart", "data-points") == "2"
    points = int(p.page.get_attribute("#loss-chart", "data-points"))
    p.page.screenshot(path=shots / "runs-report.png", full_page=True)

    if (runs_dir / "live").is_dir():  # the other run, from the previous test: overlaid
        p.page.select_option("#compare", "=live")
        chart = p.page.locator("#loss-chart")
        until(lambda: int(chart.get_attribute("data-points")) > points, what="the overlay")
        p.page.screenshot(path=shots / "runs-compare.png")
    p.close()


def raw_get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """GET `path` exactly as written (no client normalizes its dots or decodes it)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_only_files_under_the_runs_folder_are_served(
    server: tuple[str, list[str]], runs_dir: Path, tmp_path: Path
) -> None:
    url, _ = server
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"\x89PNG TOPSECRET")
    write_config(outside / "run", {"task": "pretrain"})
    (outside / "run" / "report.md").write_text("# TOPSECRET report")
    (runs_dir / "link").symlink_to(outside, target_is_directory=True)
    rel = os.path.relpath(outside, runs_dir)
    refused = [
        f"/runs/api/file/{rel}/secret.png",
        f"/runs/api/file/live/../{rel}/secret.png",
        f"/runs/api/file/%2e%2e/{rel}/secret.png",
        f"/runs/api/file/live%2f..%2f{rel.replace('/', '%2f')}%2fsecret.png",
        f"/runs/api/file/%252e%252e/{rel}/secret.png",
        f"/runs/api/file/{outside}/secret.png".replace("file//", "file/%2F"),
        f"/runs/api/file/{'/' + str(outside).lstrip('/')}/secret.png",
        "/runs/api/file/link/secret.png",
        "/runs/api/report/link/run",
        "/runs/api/run/link/run",
        "/runs/api/metrics/..",
        "/runs/api/file/live/config.json",  # not an image
    ]
    for path in refused:
        status, body = raw_get(url, path)
        assert status in (400, 404), (path, status, body)
        assert "TOPSECRET" not in body and "error" in json.loads(body), (path, body)
    assert "link" not in [r["id"] for r in httpx.get(f"{url}/runs/api/list").json()["runs"]]
    assert raw_get(url, "/runs/api/file/done/loss.png")[0] == 200


def test_api_key_guards_every_api_and_the_page_asks_for_it(
    browser: Any, runs_dir: Path, tmp_path: Path
) -> None:
    """A server with --runs only and a key: the APIs want the Bearer token; the page asks for
    the key and then shows the runs. Off loopback, the key is required (one line)."""
    cmd = gptlab_command("serve", "--runs", str(tmp_path), "--host", "0.0.0.0", "--port", "0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=gptlab_env(), timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--api-key: required with --host 0.0.0.0" in proc.stderr

    shutil.copytree(runs_dir / "done", tmp_path / "done")
    with served(None, "--runs", str(tmp_path), "--api-key", "s3cret") as (url, _):
        assert httpx.get(f"{url}/runs/api/list").status_code == 401
        bad = httpx.get(f"{url}/api/tags", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and "API key" in bad.json()["error"]
        ok = httpx.get(f"{url}/runs/api/list", headers={"Authorization": "Bearer s3cret"})
        assert [r["id"] for r in ok.json()["runs"]] == ["done"]
        assert (
            httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code
            == 404
        )
        p = Page(browser, url)
        until(lambda: p.page.is_visible("#key-form"), what="the key form")
        p.page.fill("#key", "s3cret")
        p.page.click("#key-form button")
        until(lambda: p.page.locator('#run-list tr[data-id="done"]').count(), what="the runs")
        assert p.page.is_hidden("#tab-chat") and p.page.is_hidden("#key-form")
        p.close()


def test_first_load_is_fast(browser: Any, server: tuple[str, list[str]]) -> None:
    """The page's first load from the local server (navigation to the load event, its three
    files included), measured by the browser; docs/web.md records the figures."""
    url, _ = server
    p = Page(browser, url)
    times, served = [], []
    for k in range(6):
        if k:
            p.page.reload()
        until(lambda: p.page.is_visible("#chat"), what="the page")
        nav = p.page.evaluate("() => performance.getEntriesByType('navigation')[0].toJSON()")
        times.append(nav["loadEventEnd"] - nav["startTime"])
        served.append(nav["responseEnd"] - nav["requestStart"])  # the server's part
    ms = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    print(
        f"load: first {times[0]:.1f} ms, reloads {ms(times[1:])} ms; HTML served in {ms(served)} ms"
    )
    assert min(times) < 1000  # 200 ms is the goal (see docs/web.md); this bound is generous
    p.close()
