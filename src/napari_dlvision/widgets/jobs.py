"""One long job at a time, in a napari thread worker, stoppable.

A job is a generator of core.events.Progress. It runs in a worker thread;
each event is handed to `on_event` on the main thread (where layers may be
touched). Stop ends the job at its next event, and the generator is closed
on the main thread once the worker is done, so its clean-up (putting the
kept weights back into a network, say) has run before `on_end` or anything
else uses the model.

An event that carries a payload (a preview, predicted blocks, the results)
is shown while the worker waits: the main thread then creates or fills
layers without competing for the GIL and the cores with the training
threads (which stretched a 0.15 s layer creation into a 0.4 s freeze), and
previews cannot pile up in the queue faster than the viewer shows them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from napari.qt.threading import create_worker
from qtpy.QtCore import Qt

from ..core.errors import UserInputError

log = logging.getLogger("napari_dlvision")


def describe_error(exc: BaseException) -> str:
    """One line for a notification; tracebacks go to the log only."""
    if isinstance(exc, UserInputError):
        return " ".join(str(exc).split())
    if isinstance(exc, MemoryError):
        return "out of memory: try a smaller image, patch, tile, batch or fewer features"
    if isinstance(exc, OSError) and exc.strerror:
        from ..core.io import final_name

        return f"{exc.strerror}: {final_name(exc.filename)}" if exc.filename else exc.strerror
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


SHOW_WAIT_S = 2.0  # the longest a worker waits for the viewer to show an event
CLOSE_WAIT_S = 15.0  # the longest a closing window waits for a stopped job (an import of torch cannot stop)


class Shown:
    """How many of a job's events the main thread has handled; the worker waits on it."""

    def __init__(self):
        self.count, self.cond = 0, threading.Condition()

    def one_more(self):
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float):
        with self.cond:
            self.cond.wait_for(lambda: self.count >= n, timeout)


@dataclass
class Job:
    gen: Any
    on_event: Callable
    on_end: Callable | None = None
    context: dict = field(default_factory=dict)  # what the callbacks need to know
    t0: float = field(default_factory=time.perf_counter)
    complete: bool = False  # reached its "done" event
    error: str | None = None
    stopped: bool = False
    shown: Shown = field(default_factory=Shown)
    ended: threading.Event = field(default_factory=threading.Event)  # its worker thread is done with it

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0


class JobFailed(Exception):
    """A job's RuntimeError under another type. superqt's workers take any
    RuntimeError for "the worker's Qt object was deleted" and end without
    emitting errored or finished, which would leave the widget busy for good;
    torch reports most of its failures as RuntimeError."""

    def __init__(self, original: RuntimeError):
        super().__init__(str(original))
        self.original = original


def _drain(gen, shown: Shown):
    """Generator function wrapping a generator, as napari's workers want; after an
    event with a payload it waits (briefly) until the main thread has shown it."""
    events, n = iter(gen), 0
    while True:
        try:
            event = next(events)
        except StopIteration:
            return
        except RuntimeError as e:
            raise JobFailed(e) from e
        n += 1
        yield event
        if getattr(event, "payload", None):
            shown.wait_for(n, SHOW_WAIT_S)


class JobRunner:
    """Runs Jobs for one widget; `on_error(message, job)` hears of failures."""

    def __init__(self, on_error: Callable[[str, Job], None], on_state: Callable[[bool], None] = lambda busy: None):
        self.on_error, self.on_state = on_error, on_state
        self.worker = None
        self.job: Job | None = None
        self._after: Callable | None = None  # to run once the current job has ended
        self.closed = False  # its widget is gone: events are no longer shown

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(self, gen, on_event, on_end=None, **context) -> Job:
        if self.busy:
            raise RuntimeError("a job is already running")
        job = self.job = Job(gen, on_event, on_end, context)
        # Connecting "errored" stops napari from re-raising in the event loop.
        self.worker = create_worker(
            _drain, gen, job.shown, _start_thread=False,
            _connect={"yielded": self._yielded, "errored": self._errored, "finished": self._finished},
        )
        # In the worker's thread, as it finishes (a queued signal would wait for the
        # event loop): shut_down() waits on it while the main thread is busy closing.
        self.worker.finished.connect(job.ended.set, Qt.ConnectionType.DirectConnection)
        self.on_state(True)
        self.worker.start()
        return job

    def stop(self):
        """End the running job at its next event (its clean-up still runs)."""
        self._after = None
        if self.worker is not None:
            self.job.stopped = True
            self.worker.quit()

    def shut_down(self, timeout: float = CLOSE_WAIT_S) -> bool:
        """The widget is being deleted (its window closed): stop the job, show
        nothing more, and wait until its thread is done with it. A job still
        running met deleted Qt objects, and Python aborted (exit 134)."""
        self.closed = True
        self._after = None
        if self.job is None:
            return True
        self.stop()
        return self.job.ended.wait(timeout)

    def then(self, action: Callable):
        """Run `action` once the current job has ended (at once when idle)."""
        if self.busy:
            self._after = action
        else:
            action()

    def _yielded(self, event):
        job = self.job
        if self.closed:
            job.shown.one_more()
            return
        if getattr(event, "stage", None) == "done":
            job.complete = True
        try:
            job.on_event(event, job)
        except Exception as e:  # noqa: BLE001 - a display failure must not kill the worker's clean-up
            log.error("showing a job event failed", exc_info=e)
            self._fail(e)
        finally:
            job.shown.one_more()

    def _errored(self, exc):
        self._fail(exc)

    def _fail(self, exc):
        if isinstance(exc, JobFailed):
            exc = exc.original
        if not isinstance(exc, (UserInputError, MemoryError)):
            log.error("job failed", exc_info=exc)
        job = self.job
        job.error = describe_error(exc)
        if not self.closed:
            self.on_error(job.error, job)
        if self.worker is not None:
            self.worker.quit()

    def _finished(self):
        job, self.worker = self.job, None
        try:
            job.gen.close()  # runs the generator's clean-up if it was stopped
        except Exception as e:  # noqa: BLE001
            log.error("closing the job failed", exc_info=e)
            job.error = job.error or describe_error(e)
            if not self.closed:
                self.on_error(job.error, job)
        if self.closed:
            return
        self.on_state(False)
        if job.on_end is not None:
            job.on_end(job)
        after, self._after = self._after, None
        if after is not None:
            after()
