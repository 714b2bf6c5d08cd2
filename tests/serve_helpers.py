"""Starting and stopping a real ``diffgen serve`` for the serve tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from .helpers import free_port, wait_for


def start_server(checkpoint: Path, inputs: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """A ``diffgen serve`` process on ``checkpoint`` (img2img pictures kept in ``inputs``, more
    options in ``args``) on a free port, once it answers; and its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "diffgen", "serve", "-c", str(checkpoint), "--port", str(port),
                             "--inputs", str(inputs), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "DIFFGEN_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:  # a server with a key answers 401 until it is given
            return httpx.get(url + "/sdapi/v1/progress", timeout=1).status_code in (200, 401)
        except httpx.TransportError:
            return False

    wait_for(answers, proc, seconds=60)
    return proc, url


def stop_server(proc: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM, then the exit code and stderr."""
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr
