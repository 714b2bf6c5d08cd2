"""Atomic file writes, kept free of heavy imports so commands that only write files start fast."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them to their handlers. Those
    handlers raise an exception at any bytecode, and one raised between mkstemp creating the
    temporary and the ``try`` that removes it would leave the temporary behind (seen as a .tmp
    file after SIGTERM). A signal mask cannot do this: the process's other threads (torch's) would
    take the signal and Python would still run the handler here. Signal handlers can only be set
    from the main thread; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not None:  # None: a handler set outside Python, left alone
            previous[signum] = signal.signal(signum, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in caught:
            signal.raise_signal(signum)


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (same filesystem), so
    a crash leaves the old file or the new one, never half of one. Ctrl-C and SIGTERM wait for the
    write to end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _interrupts_deferred():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            write(tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; give them the usual mode
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# atomic_write's temporary names: ".<final name>.<8 random characters>.tmp"
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(folder: Path, before: float | None = None) -> list[Path]:
    """Delete temporary files that an earlier run killed mid-write (SIGKILL, power loss) left in
    ``folder``; only diffgen's own naming pattern is touched, and with ``before`` (a time.time())
    only files last written before it: under torchrun the other processes of this run may already
    be writing. Call it while holding the folder (``folder_lock``, or a run folder no other run uses)."""
    removed = []
    if folder.is_dir():
        for path in folder.iterdir():
            if _TEMPORARY.match(path.name) and path.is_file():
                with contextlib.suppress(FileNotFoundError):  # renamed by its writer meanwhile
                    if before is not None and path.stat().st_mtime >= before:
                        continue
                    path.unlink()
                    removed.append(path)
    return removed


@contextlib.contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold an advisory lock (flock) on ``folder`` for the duration; a second writer gets an
    InputError naming the process that holds it, instead of mixing its files with the first's."""
    import fcntl

    from diffgen.errors import InputError

    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".diffgen.lock", "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise InputError(f"{folder} is in use by another {what} ({holder}); wait for it to finish "
                             "or choose another -o folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock
