"""The one sampling thread: a bounded queue of jobs, the loaded model, progress and interruption.

The model is touched by this thread only (torch modules are not shared between threads), and one
model is loaded at a time: a job that names another model replaces it. Request handlers submit a
job and await its future; a full queue is refused at once (``QueueFull``, HTTP 429) and, once
``stop`` was called (SIGTERM), so is every new job and every job still waiting (``ShuttingDown``,
HTTP 503), while the job in progress finishes the batch it is computing.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from diffgen.errors import DiffgenError
from diffgen.serve.catalog import Catalog
from diffgen.serve.generation import Generation, png_bytes, recipe_of, sample_batches

if TYPE_CHECKING:
    from diffgen.api import Model


class QueueFull(DiffgenError):
    """Every place in the queue is taken (HTTP 429)."""


class ShuttingDown(DiffgenError):
    """The server is stopping and takes no new work (HTTP 503)."""


@dataclass(frozen=True)
class Finished:
    """A generation's answer: each image as the PNG bytes ``diffgen sample`` would write, its
    recipe, and whether the request was cut short (interrupted, or the server stopping)."""

    generation: Generation
    pngs: list[bytes]
    recipes: list[dict]
    cut_short: bool
    model_name: str
    model_sha256: str


@dataclass
class Job:
    """One unit of the worker's work: a generation, or (``generation`` None) loading a model."""

    model: str
    generation: Generation | None
    id: str
    future: Future = field(default_factory=Future)
    interrupted: threading.Event = field(default_factory=threading.Event)
    steps_done: int = 0
    started: float = 0.0

    @property
    def steps_total(self) -> int:
        return self.generation.count * self.generation.steps_per_image if self.generation is not None else 0


class Worker:
    """The sampling thread and its queue."""

    def __init__(self, catalog: Catalog, queue_size: int, device: str = "auto", threads: int | None = None):
        self.catalog = catalog
        self.device = device
        self.threads = threads
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._current: Job | None = None
        self._stopping = False
        self._model: Model | None = None
        self._model_key: tuple[str, str] | None = None  # (name, file SHA-256) of the loaded model
        self.selected = catalog.first_name  # what a request that names no model gets
        self._thread = threading.Thread(target=self._run, name="diffgen-sampler", daemon=True)

    def start(self) -> Future:
        """Start the thread; the future of loading the first model."""
        self._thread.start()
        return self.submit(self.selected)

    def submit(self, model: str, generation: Generation | None = None) -> Future:
        """Queue a generation (or, without one, the loading of ``model``); its future answers
        a ``Finished`` (or the model's name). QueueFull or ShuttingDown when it cannot wait."""
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the server is shutting down and takes no new work")
            job = Job(model, generation, f"job-{next(self._ids)}")
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise QueueFull(f"the queue is full ({self._queue.maxsize} requests waiting): "
                                "try again when one has finished") from None
        return job.future

    def interrupt(self) -> bool:
        """Stop the job in progress between two sampler steps; whether there was one."""
        with self._lock:
            job = self._current
        if job is not None:
            job.interrupted.set()
        return job is not None

    def progress(self) -> dict[str, Any]:
        """The job in progress (id, steps done and to do, start time, interrupted) and the count
        of jobs waiting or running."""
        with self._lock:
            job = self._current
            waiting = self._queue.qsize()
        return {"job": job.id if job is not None else "", "job_count": waiting + (job is not None),
                "steps_done": job.steps_done if job is not None else 0,
                "steps_total": job.steps_total if job is not None else 0,
                "started": job.started if job is not None else 0.0,
                "interrupted": job.interrupted.is_set() if job is not None else False,
                "model": self._model_key[0] if self._model_key is not None else ""}

    def stop(self) -> None:
        """Take no new work, answer the waiting jobs ShuttingDown, let the job in progress finish
        its batch, then end the thread."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None and job.future.set_running_or_notify_cancel():
                    job.future.set_exception(ShuttingDown("the server shut down before this request's turn"))
            self._queue.put_nowait(None)  # the queue is empty now, and nothing else can enter it

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _run(self) -> None:
        from diffgen.threads import apply_threads

        apply_threads(self.threads)  # torch's threads are set per thread: here, where it computes
        while True:
            job = self._queue.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue  # its client went away while it waited
            job.started = time.time()
            with self._lock:
                self._current = job
            result: Any = None
            error: Exception | None = None
            try:
                result = self._do(job)
            except Exception as exc:  # noqa: BLE001 - every failure is the request's answer, not the thread's end
                error = exc
            # the job leaves the progress before its client is answered, so that a client that
            # asks for the progress after its answer finds the job gone
            with self._lock:
                self._current = None
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)

    def _do(self, job: Job) -> Any:
        model = self._model_for(job.model)
        if job.generation is None:
            self.selected = job.model
            return job.model
        generation = job.generation.for_model(model)

        def on_step(done: int) -> None:
            job.steps_done = done

        images, cut_short = sample_batches(model, generation, on_step, job.interrupted.is_set, lambda: self._stopping)
        assert self._model_key is not None
        return Finished(generation, [png_bytes(image) for image in images], [recipe_of(image) for image in images],
                        cut_short, self._model_key[0], self._model_key[1])

    def _model_for(self, name: str) -> Model:
        """The catalog's model ``name``, loaded now unless it is the one loaded (the same file)."""
        entry = self.catalog.entry(name)
        if self._model is None or self._model_key != (entry.name, entry.sha256):
            self._model = self._model_key = None  # the old model's memory goes before the new one comes
            from diffgen.api import load

            self._model = load(entry.path, self.device)
            self._model_key = (entry.name, entry.sha256)
        return self._model
