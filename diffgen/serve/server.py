"""Running the server: the first model loaded, the port bound, uvicorn, and a clean SIGTERM.

On SIGTERM (or Ctrl-C) the worker stops taking work (waiting requests are answered 503), the
batch in progress is finished and answered, uvicorn closes the connections once their answers are
sent, and the process exits with code 0.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvicorn

from diffgen.errors import DiffgenError, InputError
from diffgen.serve.app import Served, create_app
from diffgen.serve.catalog import Catalog
from diffgen.serve.options import ServeOptions
from diffgen.serve.worker import Worker


class DrainingServer(uvicorn.Server):
    """uvicorn, whose exit signal first tells the worker to stop after the batch in progress."""

    def __init__(self, config: uvicorn.Config, worker: Worker):
        super().__init__(config)
        self.worker = worker

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # the worker's lock may be held by the code this handler interrupted: stop from another thread
        threading.Thread(target=self.worker.stop, name="diffgen-stop", daemon=True).start()
        super().handle_exit(sig, frame)


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``; InputError (one line) when it cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"cannot listen on {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    return sock


def default_model_file() -> Path | None:
    """The embedded default model's file, or None where there is none (a checkpoint-less install)."""
    from diffgen.checkpoint import default_checkpoint

    try:
        return default_checkpoint()
    except DiffgenError:
        return None


def serve(options: ServeOptions, say: Callable[[str], None]) -> None:
    """Load the first model, listen, and answer until SIGTERM or Ctrl-C."""
    catalog = Catalog(options.models, options.checkpoint, default_model_file())
    worker = Worker(catalog, options.queue_size, options.device, options.threads)
    sock = bound_socket(options.host, options.port)  # a busy port is said before the model loads
    say(f"loading {catalog.first_name} ...")
    try:
        worker.start().result()  # a broken first checkpoint ends the command here, with its one line
    except BaseException:
        sock.close()
        raise
    config = uvicorn.Config(create_app(Served(worker, catalog, options.inputs_dir), options), log_level="warning",
                            access_log=False, lifespan="off", timeout_graceful_shutdown=None)
    server = DrainingServer(config, worker)
    host, port = sock.getsockname()[:2]
    say(f"diffgen serve: {catalog.first_name} at http://{host if ':' not in host else f'[{host}]'}:{port}/ "
        "(AUTOMATIC1111 API /sdapi/v1, OpenAI /v1/images/generations); Ctrl-C or SIGTERM stops it")
    # uvicorn raises the signal again once it has shut down; the shutdown was the answer to it
    previous = {sig: signal.signal(sig, lambda number, frame: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        worker.stop()
        worker.join(timeout=60)
        sock.close()
    say("diffgen serve: stopped")
