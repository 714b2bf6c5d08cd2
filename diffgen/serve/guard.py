"""API keys, HTTP basic auth, the Host and Content-Type checks and the body size limit, as one
ASGI middleware.

It runs before any route: a request without the key is answered 401 and one that is too large 413,
both as JSON with one message, before the application reads a byte of the body. Two checks keep web
pages in a browser from using a server that listens on this machine: a request body must be sent as
JSON (a page on another site cannot send that without a CORS preflight, which this server never
grants: 415 otherwise), and on loopback the Host header must name this machine (a DNS-rebinding
page's requests name its own host: 400). A key is sent as
``Authorization: Bearer KEY`` (the OpenAI client's way) or as the password of HTTP basic auth (any
user name: AUTOMATIC1111's clients and browsers speak basic auth); ``--api-auth USER:PASSWORD``
takes basic auth with that user and password. Keys are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


def authorized(header: str | None, api_key: str | None, api_auth: tuple[str, str] | None) -> bool:
    """Whether the ``Authorization`` header holds the key or the user and password (always, when
    neither is set)."""
    if api_key is None and api_auth is None:
        return True
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return api_key is not None and _same(value, api_key)
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        return False
    if not sep:
        return False
    if api_key is not None and _same(password, api_key):
        return True
    return api_auth is not None and _same(user, api_auth[0]) & _same(password, api_auth[1])


def names_this_machine(host: str) -> bool:
    """Whether a Host header (``name[:port]``) is localhost, 127.x.x.x or [::1]."""
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]", 1)[0]
    return name == "localhost" or name == "::1" or (name.startswith("127.") and name.replace(".", "").isdigit())


async def send_error(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON answer with one message, under both keys clients read (``error``, and FastAPI's
    ``detail``, which AUTOMATIC1111's clients show)."""
    body = json.dumps({"error": message, "detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """The middleware: authorization first, then the body read whole (at most ``max_body_bytes``)
    and handed on; anything else passes through untouched."""

    def __init__(self, app: ASGIApp, api_key: str | None, api_auth: tuple[str, str] | None, max_body_bytes: int,
                 loopback_only: bool):
        self.app = app
        self.api_key = api_key
        self.api_auth = api_auth
        self.max_body_bytes = max_body_bytes
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.loopback_only and not names_this_machine(headers.get("host", "")):
            await send_error(send, 400, "the Host header must name this machine (localhost, 127.0.0.1 or [::1])")
            return
        if not authorized(headers.get("authorization"), self.api_key, self.api_auth):
            await send_error(send, 401, "a valid API key is needed (Authorization: Bearer KEY, or basic auth)",
                             [(b"www-authenticate", b'Basic realm="diffgen", charset="UTF-8"')])
            return
        limit = self.max_body_bytes
        too_large = f"the request body is larger than {limit:,} bytes (--max-body-mb)"
        try:
            if int(headers.get("content-length", "0")) > limit:
                await send_error(send, 413, too_large)
                return
        except ValueError:
            await send_error(send, 400, "the Content-Length header is not a number")
            return
        chunks, size, more = [], 0, True
        while more:  # chunked bodies have no Content-Length: they are counted as they come
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_error(send, 413, too_large)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body and headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            await send_error(send, 415, "send the request body as JSON (Content-Type: application/json)")
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the client to go away, as the server would

        await self.app(scope, replay, send)
