"""The server's settings and the checks made before anything loads: safe by default.

No FastAPI import here: ``diffgen serve`` refuses bad options before it needs the ``serve`` extra.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from diffgen.errors import InputError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860  # AUTOMATIC1111's, so its clients find the server without being told
# Jobs waiting behind the one being sampled; past this a request is answered 429 at once rather
# than left to wait for minutes.
DEFAULT_QUEUE_SIZE = 16
# Request bodies: an img2img request carries its picture and mask as base64 (a 4 MP PNG is about
# 8 MB as base64); larger bodies are refused before they are read (413).
DEFAULT_MAX_BODY_MB = 16
# The most images one request asks for (batch_size x n_iter, OpenAI's n): every image is answered
# in the response body at once, so the body stays a few megabytes.
MAX_IMAGES_PER_REQUEST = 64
# the key can come from the environment, so that it is not visible in the process list
API_KEY_ENV = "DIFFGEN_API_KEY"


@dataclass(frozen=True)
class ServeOptions:
    """What ``diffgen serve`` was started with."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    checkpoint: Path | None = None  # the model loaded first (default: the embedded one)
    models: Path | None = None  # a folder of *.safetensors that clients may choose by name
    inputs: Path | None = None  # where img2img pictures are kept (default: a cache folder)
    api_key: str | None = None
    api_auth: tuple[str, str] | None = None  # AUTOMATIC1111's --api-auth user:password
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_body_bytes: int = DEFAULT_MAX_BODY_MB * 2**20
    device: str = "auto"
    threads: int | None = None

    @property
    def inputs_dir(self) -> Path:
        """Where uploaded pictures are kept: ``inputs``, else $XDG_CACHE_HOME/diffgen/serve-inputs."""
        if self.inputs is not None:
            return self.inputs
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return cache / "diffgen" / "serve-inputs"


def parse_api_auth(text: str | None) -> tuple[str, str] | None:
    """``user:password`` as a pair; InputError for anything else."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise InputError("--api-auth must be USER:PASSWORD, both non-empty")
    return user, password


def is_loopback(host: str) -> bool:
    """Whether ``host`` reaches this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name could resolve anywhere: treated as reachable from outside


def checked_options(options: ServeOptions) -> ServeOptions:
    """``options``, or one InputError for the first unsafe or impossible one."""
    if not 1 <= options.port <= 65535:
        raise InputError(f"--port must be from 1 to 65535, got {options.port}")
    if not 1 <= options.queue_size <= 1000:
        raise InputError(f"--queue-size must be from 1 to 1000, got {options.queue_size}")
    if not 1024 <= options.max_body_bytes <= 1024 * 2**20:
        raise InputError("--max-body-mb must be from 0.001 to 1024")
    if options.api_key is not None and len(options.api_key) < 8:
        raise InputError("--api-key must be at least 8 characters long")
    if not is_loopback(options.host) and options.api_key is None and options.api_auth is None:
        raise InputError(f"refusing to listen on {options.host} without --api-key or --api-auth: anyone who "
                         "reaches the port could use the machine (the default, 127.0.0.1, needs neither)")
    if options.models is not None and not options.models.is_dir():
        raise InputError(f"--models {options.models} is not a folder")
    if options.checkpoint is not None and not options.checkpoint.is_file():
        raise InputError(f"checkpoint not found: {options.checkpoint}")
    return options
