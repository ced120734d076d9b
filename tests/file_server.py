"""A real HTTP file server on 127.0.0.1 for download tests, with misbehaviours on demand.

`serve(files)` yields a FileServer whose `url` serves each `files[name]` at `/name`, honouring
Range requests like a blob store. `plan` scripts the next responses, one action per request:
"cut" (close the connection after `cut_after` body bytes), "stall" (send headers, then no
body), "500" (that status), "ok"; requests beyond the plan are served normally. With
`ignore_range` the server always sends the whole file. Every request's path and Range header is
recorded in `requests`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class FileServer:
    files: dict[str, bytes]
    url: str = ""
    plan: list[str] = field(default_factory=list)
    cut_after: int = 0
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            range_header = self.headers.get("Range")
            server.requests.append((self.path, range_header))
            name = urlsplit(self.path).path.lstrip("/")  # a query string is not a file name
            action = server.plan.pop(0) if server.plan else "ok"
            if action.isdigit():
                self.send_error(int(action))
                return
            if name not in server.files:
                self.send_error(404)
                return
            data = server.files[name]
            start = 0
            if range_header and not server.ignore_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if action == "stall":
                server.stop.wait(10)
                return
            if action == "cut":
                self.wfile.write(body[: server.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@contextmanager
def serve(files: dict[str, bytes]) -> Iterator[FileServer]:
    state = FileServer(files=files)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()
