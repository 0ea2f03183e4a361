"""The server's batching worker: one inference thread, a bounded queue (counted in images), and requests with
equal sampling settings coalesced into one batched decode (no FastAPI here; see app.py for the HTTP side).

Requests whose client went away are taken out of the queue before they are decoded (``Batcher.abandon``); a
shutdown refuses new work, and after its deadline answers every request still waiting with 503
(``begin_shutdown``)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from maskgit.config import SampleConfig, sample_kwargs
from maskgit.errors import MaskGITError
from maskgit.sampling.noise import RowGenerators
from maskgit.storage.images import to_uint8

log = logging.getLogger("maskgit.serving.app")
SAMPLE_FIELDS = tuple(sample_kwargs(SampleConfig()))


@dataclass(frozen=True)
class ServerConfig:
    """Batching, queueing and request limits of ``maskgit serve`` (one CLI flag per field)."""

    max_batch: int = 32  # images in one batched decode
    max_wait_ms: float = 10.0  # how long the oldest request may wait for company
    queue_size: int = 256  # images waiting to be decoded (beyond: 503); an empty queue takes any request
    max_num: int = 64  # images per request
    max_steps: int = 64  # decoding steps per request
    max_body_mb: float = 8.0  # request body (beyond: 413)
    body_timeout: float = 30.0  # seconds a whole request body may take to arrive (beyond: 408)
    header_timeout: float = 10.0  # seconds a connection may take to send a request's headers (beyond: closed)
    shutdown_timeout: float = 30.0  # SIGTERM/SIGINT: requests not answered after this many seconds get 503

    def __post_init__(self):
        numbers = (self.max_batch, self.queue_size, self.max_num, self.max_steps, self.max_wait_ms,
                   self.max_body_mb, self.body_timeout, self.header_timeout, self.shutdown_timeout)
        if not all(math.isfinite(v) for v in numbers) or min(self.max_batch, self.queue_size, self.max_num,
                                                             self.max_steps) < 1 or self.max_wait_ms < 0 \
                or min(self.max_body_mb, self.body_timeout, self.header_timeout) <= 0 or self.shutdown_timeout < 0:
            raise MaskGITError(f"server limits must be positive and finite (max_wait_ms and shutdown_timeout may "
                               f"be 0), got {self}")


class APIError(Exception):
    """An HTTP error answered as JSON {"error": message}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


# ================================================================ the worker

@dataclass(eq=False)
class Job:
    """One request in the queue: a generate request (``labels`` + ``seed`` under ``settings``, batched with
    others of the same ``settings`` when ``shared``) or an edit (``fn``, always alone)."""

    settings: Hashable | None = None  # (SampleConfig, return_steps)
    shared: bool = True
    labels: list[int] = dataclasses.field(default_factory=list)
    seed: int = 0
    prompts: list[str] | None = None  # text models: one per image ("" = the null text)
    negative_prompts: list[str] | None = None  # text models: one per image ("" = the null text)
    fn: Callable[[], Any] | None = None
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
    enqueued: float = dataclasses.field(default_factory=time.monotonic)
    abandoned: bool = False  # the client went away while this job was being decoded

    @property
    def size(self) -> int:
        return max(len(self.labels), 1)

    @property
    def batchable(self) -> bool:
        return self.shared and self.fn is None


@dataclass(frozen=True)
class GenResult:
    images: np.ndarray  # uint8 (n, H, W, C)
    steps: list[np.ndarray] | None  # per decoding step, uint8 (n, H, W, C)
    batch_requests: int
    batch_images: int


class Batcher:
    """A bounded queue and the one thread that runs the pipeline (see the module docstring)."""

    def __init__(self, pipe, max_batch: int = 32, max_wait_s: float = 0.01, queue_size: int = 256):
        if max_batch < 1 or queue_size < 1 or max_wait_s < 0:
            raise MaskGITError("max_batch and queue_size must be >= 1 and max_wait_ms >= 0")
        self.pipe, self.max_batch, self.max_wait_s, self.queue_size = pipe, max_batch, max_wait_s, queue_size
        self._cv = threading.Condition()
        self._queue: deque[Job] = deque()
        self._closing = self._held = False
        self._deadline: threading.Timer | None = None
        self.stop_at: float | None = None  # time.monotonic() of the shutdown deadline, once one is set
        self._thread = threading.Thread(target=self._loop, name="maskgit-worker", daemon=True)
        # errors: requests answered with an error; abandoned: requests whose client left before decoding
        # (never decoded); abandoned_images_decoded: images of clients that left while their batch ran
        self.stats = {"requests": 0, "images": 0, "batches": 0, "edits": 0, "rejected": 0, "errors": 0,
                      "abandoned": 0, "abandoned_images_decoded": 0, "shutdown_refused": 0, "busy_seconds": 0.0}

    # ---------------------------------------------------------- control
    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Enqueue ``job``; APIError 503 when the queue is full or the server is shutting down."""
        with self._cv:
            if self._closing:
                self.stats["rejected"] += 1
                raise APIError(503, "the server is shutting down", {"Retry-After": "5"})
            waiting = sum(j.size for j in self._queue)
            if self._queue and waiting + job.size > self.queue_size:
                self.stats["rejected"] += 1
                raise APIError(503, f"the queue is full ({waiting} images waiting, the limit is {self.queue_size}):"
                                    f" retry later", {"Retry-After": str(self._retry_after())})
            job.enqueued = time.monotonic()
            self._queue.append(job)
            self._cv.notify_all()
        return job.future

    def abandon(self, job: Job) -> bool:
        """The client of ``job`` went away: drop it if it is still waiting (True), else mark it (False)."""
        with self._cv:
            if job in self._queue and job.future.cancel():
                self._queue.remove(job)
                self.stats["abandoned"] += 1
                self._cv.notify_all()
                return True
            job.abandoned = True
            return False

    def begin_shutdown(self, deadline_s: float) -> None:
        """Refuse new requests now; requests still waiting ``deadline_s`` seconds later are answered 503."""
        with self._cv:
            self._closing, self._held = True, False
            self._cv.notify_all()
            if self._deadline is None:
                self.stop_at = time.monotonic() + deadline_s
                self._deadline = threading.Timer(deadline_s, self.refuse_waiting)
                self._deadline.daemon = True
                self._deadline.start()

    def refuse_waiting(self) -> int:
        """Answer every request still in the queue with 503 (the shutdown deadline passed); returns how many."""
        with self._cv:
            jobs, self._queue = list(self._queue), deque()
            self._cv.notify_all()
        error = APIError(503, "the server shut down before this request was decoded", {"Retry-After": "5"})
        refused = 0
        for j in jobs:
            if j.future.set_running_or_notify_cancel():  # False: its client had already gone
                j.future.set_exception(error)
                refused += 1
        with self._cv:
            self.stats["shutdown_refused"] += refused
        return refused

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish every accepted one (within ``timeout`` seconds if given), stop the thread."""
        with self._cv:
            self._closing, self._held = True, False
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._deadline is not None:
            self._deadline.cancel()

    def hold(self) -> None:
        """Pause the worker between batches (requests keep queueing); for tests and maintenance."""
        with self._cv:
            self._held = True

    def release(self) -> None:
        with self._cv:
            self._held = False
            self._cv.notify_all()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closing

    def queued(self) -> int:
        with self._cv:
            return len(self._queue)

    def snapshot(self) -> dict:
        with self._cv:
            s = dict(self.stats, queued=len(self._queue))
        s["mean_batch_size"] = s["requests"] / s["batches"] if s["batches"] else 0.0
        s["mean_batch_images"] = s["images"] / s["batches"] if s["batches"] else 0.0
        return s

    def queued_images(self) -> int:
        with self._cv:
            return sum(j.size for j in self._queue)

    def _retry_after(self) -> int:
        per_image = self.stats["busy_seconds"] / max(self.stats["images"] + self.stats["edits"], 1)
        return max(1, math.ceil(per_image * sum(j.size for j in self._queue)))

    # ---------------------------------------------------------- the thread
    def _next_batch(self) -> list[Job] | None:
        with self._cv:
            while not self._queue or self._held:
                if self._closing and not self._queue:
                    return None
                self._cv.wait()
            head = self._queue[0]
            if head.batchable:  # wait (from the head's arrival) for more requests with the same settings
                while not self._closing:
                    left = head.enqueued + self.max_wait_s - time.monotonic()
                    if left <= 0 or self._same(head) >= self.max_batch:
                        break
                    self._cv.wait(left)
            batch, n = [head], head.size
            if head.batchable:
                for job in list(self._queue)[1:]:
                    if job.batchable and job.settings == head.settings and n + job.size <= self.max_batch:
                        batch.append(job)
                        n += job.size
            chosen = set(map(id, batch))
            self._queue = deque(j for j in self._queue if id(j) not in chosen)
            return batch

    def _same(self, head: Job) -> int:
        return sum(j.size for j in self._queue if j.batchable and j.settings == head.settings)

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]  # skip cancelled requests
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                if live[0].fn is not None:
                    self._run_call(live[0])
                else:
                    self._run_generate(live)
            except MaskGITError as e:  # the user's mistake: every future of the batch gets it
                self._fail(live, e)
            except Exception as e:  # a bug: log it, answer 500, keep the worker alive
                log.exception("inference failed")
                self._fail(live, e)
            with self._cv:
                self.stats["busy_seconds"] += time.perf_counter() - t0
                self.stats["errors"] += sum(1 for j in live if j.future.exception() is not None)

    @staticmethod
    def _fail(jobs: list[Job], error: Exception) -> None:
        for j in jobs:
            if not j.future.done():
                j.future.set_exception(error)

    def _run_call(self, job: Job) -> None:
        job.future.set_result(job.fn())
        with self._cv:
            self.stats["edits"] += 1

    def _run_generate(self, jobs: list[Job]) -> None:
        cfg, return_steps = jobs[0].settings
        labels = [label for j in jobs for label in j.labels]
        # every request draws its noise from its own seed, exactly as it would alone
        generator = RowGenerators([(torch.Generator().manual_seed(j.seed), len(j.labels)) for j in jobs])
        prompts = negatives = None
        if jobs[0].prompts is not None:  # a text model: every job of the batch has prompts
            prompts = [p for j in jobs for p in j.prompts]
            negatives = [n for j in jobs for n in j.negative_prompts or [""] * len(j.labels)]
            negatives = negatives if any(n.strip() for n in negatives) else None
        out = self.pipe.generate(labels=None if prompts else labels, prompts=prompts, negative_prompts=negatives,
                                 seed=None, generator=generator, output="tensor",
                                 return_steps=return_steps, **{f: getattr(cfg, f) for f in SAMPLE_FIELDS})
        images, steps = out if return_steps else (out, None)
        images = to_uint8(images)
        abandoned = sum(len(j.labels) for j in jobs if j.abandoned)
        steps = [to_uint8(s) for s in steps] if steps is not None else None
        with self._cv:
            self.stats["requests"] += len(jobs)
            self.stats["images"] += len(labels)
            self.stats["batches"] += 1
            self.stats["abandoned_images_decoded"] += abandoned
        a = 0
        for j in jobs:
            b = a + len(j.labels)
            j.future.set_result(GenResult(images[a:b], [s[a:b] for s in steps] if steps is not None else None,
                                          len(jobs), len(labels)))
            a = b


# ================================================================ helpers


