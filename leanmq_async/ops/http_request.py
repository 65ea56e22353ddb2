"""Plumbing of the admin HTTP API: requests, responses, JSON bodies and HTTP errors."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import msgspec

if TYPE_CHECKING:
    pass


MAX_BODY = 1024 * 1024
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}
JSON_TYPE = "application/json"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(slots=True)
class Response:
    """What a request gets: status, headers and body bytes."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Request:
    __slots__ = ("body", "headers", "method", "query", "segments")

    def __init__(
        self,
        method: str,
        segments: list[str],
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> None:
        self.method = method.upper()
        self.segments = segments
        self.query = query
        self.headers = headers
        self.body = body

    def flag(self, name: str, default: bool = False) -> bool:
        raw = self.query.get(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in TRUE_WORDS:
            return True
        if value in FALSE_WORDS:
            return False
        raise HTTPError(400, f"{name} must be true or false, got {raw!r}")

    def number(self, name: str, default: float | None = None, *, integer: bool = False) -> float:
        raw = self.query.get(name)
        if raw is None or raw == "":
            if default is None:
                raise HTTPError(400, f"the query parameter {name} is required")
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise HTTPError(400, f"{name} must be {kind}, got {raw!r}") from None
        if not math.isfinite(value) or value < 0:
            raise HTTPError(400, f"{name} must be >= 0, got {raw!r}")
        return value

    def json(self) -> Any:
        if not self.body.strip():
            raise HTTPError(400, 'a JSON body is required, e.g. {"ids": ["1700000000000-0"]}')
        try:
            return msgspec.json.decode(self.body)
        except msgspec.DecodeError as exc:
            raise HTTPError(400, f"invalid JSON body: {exc}") from None


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


def json_response(status: int, value: Any) -> Response:
    return Response(status, encode(value), {"content-type": JSON_TYPE, "cache-control": "no-store"})


def dashboard_page() -> bytes:
    return resources.files("leanmq_async.ops").joinpath("dashboard.html").read_bytes()


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPError(413, f"request body over {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def looks_like_id(text: str) -> bool:
    ms, dash, seq = text.partition("-")
    return bool(dash) and ms.isdigit() and seq.isdigit()


def split_list(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def asgi_segments(scope: Scope) -> list[str]:
    """The decoded path segments below the mount point (``root_path``).

    Split on the raw path when the server gives it, so ``%2F`` stays inside a segment.
    """
    root = split_list(scope.get("root_path", "") or "")
    raw = scope.get("raw_path")
    if raw:
        parts = [unquote(p) for p in split_list(raw.decode("latin-1").split("?", 1)[0])]
        # A server behind a proxy may give a raw path without the root path.
        return parts[len(root) :] if parts[: len(root)] == root else parts
    parts = split_list(scope.get("path", "/"))
    return parts[len(root) :] if parts[: len(root)] == root else parts
