"""Errors as each dialect's clients expect them: every refusal (ApiError, a user's mistake, an
invalid body, an HTTP error) becomes a 4xx/5xx in that API's own error shape."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from gptlab.errors import GptlabError
from gptlab.serve.engine import ApiError


def error_response(request: Request, status: int, message: str) -> JSONResponse:
    """Each API's own error shape, so its clients raise their usual exception types."""
    if request.url.path.startswith("/v1/"):
        body: dict[str, Any] = {
            "error": {"message": message, "type": "invalid_request_error", "code": status}
        }
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status)


def validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return f"malformed JSON body: {first.get('ctx', {}).get('error', first.get('msg'))}"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    return f"{where or 'body'}: {first.get('msg', 'invalid')}"


class RequestGuard:
    """Refuse request bodies over `max_bytes` (413), counting what arrives rather than trusting
    Content-Length, and read every body as JSON whatever its declared type (as Ollama does, so
    `curl -d '{...}'` works)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        others = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
        scope = {**scope, "headers": [*others, (b"content-type", b"application/json")]}
        received = 0

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, f"request body over the {self.max_bytes}-byte limit")
            return message

        await self.app(scope, limited, send)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(request, exc.status, exc.message)


async def _user_error(request: Request, exc: GptlabError) -> JSONResponse:
    return error_response(request, 400, str(exc))


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(request, 400, validation_message(exc))


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return error_response(request, exc.status_code, str(exc.detail))


def add_error_handlers(app: FastAPI) -> None:
    """Answer every refusal with `error_response`, FastAPI's own (invalid body, 404, 405, 413
    from RequestGuard) included."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(GptlabError, _user_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
