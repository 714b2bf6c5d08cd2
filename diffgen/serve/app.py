"""The ASGI application: the routes of both APIs and the page, over one worker and one catalog.

Every answer is JSON (or the page); every failure is one message with its status: 400 for a bad
value (the CLI's words), 401 without the key, 404 for a model or route that does not exist, 413
for a body too large, 429 when the queue is full, 503 while shutting down, and 500 with one line,
never a traceback, for a failure of the server itself.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from diffgen.errors import DiffgenError, InputError
from diffgen.serve import a1111, openai_images
from diffgen.serve.catalog import Catalog, UnknownModel
from diffgen.serve.generation import Generation
from diffgen.serve.guard import ASGIApp, Guard
from diffgen.serve.options import ServeOptions, is_loopback
from diffgen.serve.page import PAGE
from diffgen.serve.worker import Finished, QueueFull, ShuttingDown, Worker


@dataclass(frozen=True)
class Served:
    """What the routes share: the worker, the catalog, and where uploaded pictures are kept."""

    worker: Worker
    catalog: Catalog
    inputs: Path


def status_of(exc: Exception) -> tuple[int, str]:
    """The HTTP status and the one message for a failure."""
    if isinstance(exc, UnknownModel):
        return 404, str(exc)
    if isinstance(exc, InputError):
        return 400, str(exc)
    if isinstance(exc, QueueFull):
        return 429, str(exc)
    if isinstance(exc, ShuttingDown):
        return 503, str(exc)
    if isinstance(exc, DiffgenError):
        return 500, str(exc)
    print(f"diffgen serve: {type(exc).__name__}: {exc}", file=sys.stderr)  # one line for the operator
    return 500, f"internal error ({type(exc).__name__}); the server's log has its message"


def error_response(path: str, status: int, message: str) -> JSONResponse:
    """OpenAI's error shape under /v1/, else ``{"error": message, "detail": message}``."""
    body = openai_images.error_body(message, status) if path.startswith("/v1/") else \
        {"error": message, "detail": message}
    return JSONResponse(body, status_code=status)


Route = Callable[[Request], Awaitable[Any]]


def answered(route: Route) -> Callable[[Request], Awaitable[Response]]:
    """The route with every failure turned into its one-message answer."""
    async def wrapper(request: Request) -> Response:
        try:
            result = await route(request)
        except Exception as exc:  # noqa: BLE001 - no failure leaves without its status and one message
            return error_response(request.url.path, *status_of(exc))
        return result if isinstance(result, Response) else JSONResponse(result)

    wrapper.__name__ = route.__name__
    return wrapper


async def finished(worker: Worker, generation: Generation) -> Finished:
    """Queue the generation and wait for it; a client that goes away while it waits takes its
    job out of the queue (a job already sampling runs to its end)."""
    future = worker.submit(generation.model, generation)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        future.cancel()
        raise


def build_app(served: Served) -> FastAPI:
    """The routes (no authorization or size limit: ``create_app`` wraps them in the guard)."""
    app = FastAPI(title="diffgen serve", docs_url=None, redoc_url=None, openapi_url=None)
    worker, catalog = served.worker, served.catalog

    def route(method: str, path: str) -> Callable[[Route], Route]:
        def register(handler: Route) -> Route:
            app.add_api_route(path, answered(handler), methods=[method], include_in_schema=False)
            return handler
        return register

    async def a1111_images(request: Request, edit: bool) -> dict[str, Any]:
        data = a1111.json_body(await request.body())
        generation = await run_in_threadpool(a1111.generation_of, data, worker.selected, catalog, served.inputs, edit)
        return a1111.response(data, await finished(worker, generation))

    @route("POST", "/sdapi/v1/txt2img")
    async def txt2img(request: Request) -> dict[str, Any]:
        return await a1111_images(request, edit=False)

    @route("POST", "/sdapi/v1/img2img")
    async def img2img(request: Request) -> dict[str, Any]:
        return await a1111_images(request, edit=True)

    @route("GET", "/sdapi/v1/sd-models")
    async def sd_models(request: Request) -> list[dict[str, Any]]:
        return await run_in_threadpool(a1111.sd_models, catalog)  # hashing a new file takes a moment

    @route("POST", "/sdapi/v1/refresh-checkpoints")
    async def refresh_checkpoints(request: Request) -> None:
        return None  # the folder is read again on every listing

    @route("GET", "/sdapi/v1/samplers")
    async def samplers(request: Request) -> list[dict[str, Any]]:
        return a1111.samplers()

    @route("GET", "/sdapi/v1/schedulers")
    async def schedulers(request: Request) -> list[dict[str, Any]]:
        return a1111.schedulers()

    @route("GET", "/sdapi/v1/scripts")
    async def scripts(request: Request) -> dict[str, list]:
        return {"txt2img": [], "img2img": []}  # no scripts: clients then send none

    @route("GET", "/sdapi/v1/options")
    async def get_options(request: Request) -> dict[str, Any]:
        entry = await run_in_threadpool(catalog.entry, worker.selected)
        return {"sd_model_checkpoint": entry.title, "sd_checkpoint_hash": entry.sha256, "samples_format": "png"}

    @route("POST", "/sdapi/v1/options")
    async def set_options(request: Request) -> None:
        data = a1111.json_body(await request.body())
        unknown = sorted(set(data) - {"sd_model_checkpoint", "samples_format"})
        if unknown:
            raise InputError(f"this server's options are sd_model_checkpoint and samples_format, not "
                             f"{', '.join(unknown)}"[:300])
        if data.get("samples_format", "png") != "png":
            raise InputError("samples_format can only be png (the PNG carries the image's recipe)")
        if "sd_model_checkpoint" in data:  # loaded by the worker, in its turn; answered once it is
            name = catalog.entry(data["sd_model_checkpoint"]).name
            await asyncio.wrap_future(worker.submit(name))
        return None

    @route("GET", "/sdapi/v1/progress")
    async def progress(request: Request) -> dict[str, Any]:
        return a1111.progress(worker.progress())

    @route("POST", "/sdapi/v1/interrupt")
    async def interrupt(request: Request) -> dict[str, Any]:
        worker.interrupt()
        return {}

    @route("POST", "/v1/images/generations")
    async def images_generations(request: Request) -> dict[str, Any]:
        data = a1111.json_body(await request.body())
        generation = await run_in_threadpool(openai_images.generation_of, data, worker.selected, catalog)
        return openai_images.response(await finished(worker, generation))

    @route("GET", "/")
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                           "style-src 'unsafe-inline'; script-src 'unsafe-inline'"})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:  # unknown routes, wrong methods
        return error_response(request.url.path, exc.status_code, str(exc.detail))

    return app


def create_app(served: Served, options: ServeOptions) -> ASGIApp:
    """The application behind the guard (keys, body size)."""
    return Guard(build_app(served), options.api_key, options.api_auth, options.max_body_bytes,
                 loopback_only=is_loopback(options.host))
