"""Atomic file writes, kept free of heavy imports so commands that only write files start fast."""

from __future__ import annotations

import contextlib
import errno
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
        for number in caught:
            signal.raise_signal(number)


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (same filesystem), so
    a crash leaves the old file or the new one, never half of one. Ctrl-C and SIGTERM wait for the
    write to end. A link at ``path`` is replaced, never written through; a folder there is refused
    (InputError) before anything is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():
        from diffgen.errors import InputError

        raise InputError(f"{path} is a folder: cannot write a file in its place")
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


def _what_is(path: Path) -> str:
    """What a path that should be a regular file is instead, in words (for a one-line refusal)."""
    import stat

    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "not a regular file"
    for test, words in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
                        (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                        (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return words
    return "not a regular file"


# What folder_lock writes into its lock file; a file holding anything else is not diffgen's lock.
_LOCK_TEXT = re.compile(rb"^(pid \d+)?\s*$")


@contextlib.contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold an advisory lock (flock) on ``folder`` for the duration; a second writer gets an
    InputError naming the process that holds it, instead of mixing its files with the first's.

    The lock file is opened without following links and without blocking, and written only when
    it is a regular file with one name that holds nothing but a lock's "pid N": a link, folder,
    FIFO, hard link or foreign file planted as ``.diffgen.lock`` is refused (InputError), never
    written through or truncated."""
    import fcntl
    import stat

    from diffgen.errors import InputError

    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".diffgen.lock"

    def refuse(kind: str) -> InputError:
        return InputError(f"{path} is {kind}, not diffgen's lock file: remove it or choose another -o folder")

    with contextlib.suppress(FileNotFoundError):  # a FIFO or device is not even opened
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise refuse(_what_is(path))
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EOPNOTSUPP, errno.ENOTDIR):
            raise refuse(_what_is(path)) from None
        raise InputError(f"cannot open the lock file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise refuse(_what_is(path))
        if info.st_nlink != 1:
            raise refuse("a hard link to another file")
        if info.st_size > 64 or not _LOCK_TEXT.match(os.pread(fd, 64, 0)):
            raise refuse("a file with other content")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "another process"
            raise InputError(f"{folder} is in use by another {what} ({holder}); wait for it to finish "
                             "or choose another -o folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        try:
            yield
        except BaseException:
            # a run that failed (a model's NaN, a wrong input found late) leaves no folder it made
            # holding only its lock; removed while the lock is held, so no other run is inside
            with contextlib.suppress(OSError):
                if created and [p.name for p in folder.iterdir()] == [path.name]:
                    path.unlink()
                    folder.rmdir()
            raise
    finally:
        os.close(fd)  # closing releases the lock
