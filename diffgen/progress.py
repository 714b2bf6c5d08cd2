"""Progress on stderr for long work (sample, train, eval): a rich bar on a terminal, and a plain
line every few seconds when stderr is a file or a pipe (CI logs, nohup), where a bar would be lost
or fill the log with control characters. stdout stays for results."""

from __future__ import annotations

import sys
import time
from typing import Any

LINE_EVERY_S = 10.0


class LineProgress:
    """The part of rich.progress.Progress that diffgen uses, printed as occasional lines."""

    def __init__(self, title: str, fields: tuple[str, ...], every: float = LINE_EVERY_S, disable: bool = False,
                 stream=None):
        self.title, self.fields, self.every, self.disable = title, fields, every, disable
        self.stream = stream if stream is not None else sys.stderr
        self.tasks: dict[int, dict[str, Any]] = {}
        self.last = 0.0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        for task_id in self.tasks:
            self._print(task_id)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        task_id = len(self.tasks)
        self.tasks[task_id] = {"total": total, "completed": completed, "start": time.monotonic(),
                               "start_completed": completed, **fields}
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, advance: float = 0, **fields: Any) -> None:
        task = self.tasks[task_id]
        task["completed"] += advance
        task.update(fields)
        if time.monotonic() - self.last >= self.every:
            self._print(task_id)

    def _print(self, task_id: int) -> None:
        if self.disable:
            return
        self.last = time.monotonic()
        task = self.tasks[task_id]
        total, done = task["total"], task["completed"]
        parts = [f"{self.title}: {done:g}" + (f"/{total:g}" if total else "")]
        parts += [f"{name} {task[name]}" for name in self.fields if task.get(name) not in (None, "", "-")]
        elapsed = time.monotonic() - task["start"]
        rate = (done - task["start_completed"]) / elapsed if elapsed > 0 else 0
        if total and rate > 0 and done < total:
            parts.append(f"eta {(total - done) / rate:.0f} s")
        print(", ".join(parts), file=self.stream, flush=True)


def progress(title: str, *columns: Any, fields: tuple[str, ...] = (), disable: bool = False):
    """A rich Progress on stderr with ``columns`` when stderr is a terminal, else a LineProgress."""
    if not sys.stderr.isatty():
        return LineProgress(title, fields, disable=disable)
    from rich.console import Console
    from rich.progress import Progress

    return Progress(*columns, console=Console(stderr=True), disable=disable, transient=False)
