"""Continuous batching: one thread owns the engine and runs one decode step at a time for every admitted request.

Between steps the thread
  1. closes the streams of requests whose clients went away (their blocks go back to the pool now),
  2. admits waiting requests, first come first served, while the batch has room (--max-batch sequences) and the
     block pool can hold the admitted requests at their longest (prompt + max_tokens per sample): a request that
     does not fit waits, so a running request never meets a full cache,
  3. prefills each newly admitted prompt (engine.stream) and
  4. calls engine.step over all running streams: one batched forward per dose of drugs, each sequence with its own
     sampler, seed and noise, so its tokens are the same as when it runs alone.
New text goes to each request's asyncio queue through loop.call_soon_threadsafe; the event loop never touches torch.

Events a Job's queue receives: ("started",) after prefill, ("text", [piece per choice]) after a step that produced
text (streaming requests only), then exactly one of ("done", Completion) or ("error", RequestError).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from ..errors import ContextOverflowError, MinillamaError
from .protocol import GenerationRequest, RequestError

log = logging.getLogger("minillama.server")


@dataclass(eq=False)
class Job:
    """One request on its way through the scheduler. Created and cancelled on the event loop; the scheduler thread
    owns `stream`."""
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    blocks: int                                         # pool blocks reserved for its longest possible run
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    stream: Any = None
    cancelled: bool = False
    ended: bool = False

    def emit(self, *event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:        # the loop has closed (server shutting down): nobody is listening any more
            pass


class Scheduler:
    def __init__(self, engine, *, max_batch: int = 8, max_queue: int = 64):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.engine = engine
        self.max_batch, self.max_queue = max_batch, max_queue
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []
        self._reserved = 0                               # blocks reserved by running jobs
        self._ended = collections.Counter()              # requests "done", "cancelled", "failed" so far
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Equal doses share one Drugs object, because the engine batches sequences with the *same* drugs object in
        # one forward; a distinct-but-equal object would cost a forward of its own.
        self._doses: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    # ---- lifecycle (event loop side) ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="minillama-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    @property
    def pool_blocks(self) -> int:
        """Blocks the KV cache may ever hold (the budget admission shares out)."""
        return self.engine.cache.manager.max_blocks

    def blocks_needed(self, request: GenerationRequest) -> int:
        """Blocks a request can use at most: every sample at prompt + max_tokens (capped by the context), plus one
        for a copy-on-write of the shared last prompt block per sample. Counting shared prompt blocks once per
        sample over-reserves a little for n > 1; it never under-reserves."""
        bs = self.engine.cache.block_size
        longest = min(len(request.prompt_ids) + request.max_tokens, self.engine.context_length + 1)
        return request.n * (-(-longest // bs) + 1)

    def submit(self, request: GenerationRequest) -> Job:
        """Queue a request; raises RequestError 503 when the waiting queue is full and 400 when it could never fit
        in the KV cache."""
        blocks = self.blocks_needed(request)
        if request.n > self.max_batch:
            raise RequestError(f"n must be at most {self.max_batch} (the server's --max-batch), got {request.n}",
                               param="n")
        if blocks > self.pool_blocks:
            raise RequestError(f"this request may need {blocks} KV cache blocks but the cache holds "
                               f"{self.pool_blocks}; lower max_tokens or n", param="max_tokens")
        if request.drugs is not None:
            try:
                request.drugs = self._doses.setdefault(request.drugs, request.drugs)
            except TypeError:       # a dose shape holding something unhashable: it simply gets a forward of its own
                pass
        job = Job(request, asyncio.get_running_loop(), blocks)
        with self._wake:
            if self._stopping:
                raise RequestError("the server is shutting down", status=503, type="server_error",
                                   code="shutting_down")
            if len(self._waiting) >= self.max_queue:
                raise RequestError(f"the server is busy: {len(self._waiting)} requests are already waiting "
                                   f"(--max-queue {self.max_queue}); retry later", status=503, type="server_error",
                                   code="server_busy")
            self._waiting.append(job)
            self._wake.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: the job's stream is closed (its blocks freed) before the next step."""
        with self._wake:
            job.cancelled = True
            self._wake.notify()

    def counts(self) -> dict[str, int]:
        manager = self.engine.cache.manager
        with self._wake:
            running = sum(j.request.n for j in self._running)
            waiting = len(self._waiting)
            ended = dict(self._ended)
        return {"running_sequences": running, "waiting_requests": waiting,
                "used_blocks": manager.used_blocks, "free_blocks": manager.free_blocks,
                **{f"{outcome}_requests": ended.get(outcome, 0) for outcome in ("done", "cancelled", "failed")}}

    # ---- the scheduler thread -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._running and not self._waiting:
                    self._wake.wait()
                if self._stopping:
                    break
                self._drop_cancelled()
                admitted = self._admit()
            for job in admitted:
                self._prefill(job)
            if not self._running:
                continue
            try:
                self.engine.step([job.stream for job in self._running])
            except Exception as error:      # one bad step must not take the server down with it
                log.exception("decode step failed")
                self._fail_running(error)
                continue
            for job in [j for j in self._running if j.stream.error is not None]:   # only that request fails
                self._end_with_error(job, RequestError(f"generation failed: {job.stream.error}", status=500,
                                                       type="server_error"))
            self._publish()
        self._shutdown()

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._waiting if j.cancelled]:
            self._waiting.remove(job)
            job.ended = True
            self._ended["cancelled"] += 1
        for job in [j for j in self._running if j.cancelled]:
            job.stream.close()
            self._retire(job, "cancelled")

    def _admit(self) -> list[Job]:
        """Waiting jobs that fit now, in arrival order (the first that does not fit holds the rest back, so a large
        request is not starved by a stream of small ones)."""
        admitted = []
        sequences = sum(j.request.n for j in self._running)
        while self._waiting:
            job = self._waiting[0]
            fits_batch = sequences + job.request.n <= self.max_batch
            fits_pool = (self._reserved + job.blocks <= self.pool_blocks
                         and job.blocks <= self.engine.cache.manager.free_blocks)
            if not (fits_batch and fits_pool):
                break
            self._waiting.popleft()
            self._running.append(job)
            self._reserved += job.blocks
            sequences += job.request.n
            admitted.append(job)
        return admitted

    def _prefill(self, job: Job) -> None:
        r = job.request
        try:
            job.stream = self.engine.stream(r.prompt_ids, max_new_tokens=r.max_tokens, sampler=r.sampler,
                                            seed=r.seed, stop=r.stop, n=r.n, drugs=r.drugs)
        except ContextOverflowError as error:
            self._end_with_error(job, RequestError(str(error), param="prompt", code="context_length_exceeded"))
        except MinillamaError as error:
            self._end_with_error(job, RequestError(str(error)))
        except Exception as error:
            log.exception("prefill failed")
            self._end_with_error(job, RequestError(f"prefill failed: {error}", status=500, type="server_error"))
        else:
            job.emit("started")

    def _publish(self) -> None:
        """Hand each running job the text its samples produced in this step; retire the finished ones."""
        for job in list(self._running):
            pieces = job.stream.poll()
            if job.request.stream and any(pieces):       # a non-streaming reply is built from the completion
                job.emit("text", pieces)
            if job.stream.finished:
                job.emit("done", job.stream.completion)
                self._retire(job, "done")

    def _retire(self, job: Job, outcome: str) -> None:
        with self._wake:
            self._running.remove(job)
            self._reserved -= job.blocks
            self._ended[outcome] += 1
            job.ended = True

    def _end_with_error(self, job: Job, error: RequestError) -> None:
        if job.stream is not None:
            job.stream.close()
        self._retire(job, "failed")
        job.emit("error", error)

    def _fail_running(self, error: Exception) -> None:
        """After a failed step the running sequences' states are unknown: end them all, free their blocks, and keep
        serving the queue."""
        failure = RequestError(f"generation failed: {error}", status=500, type="server_error")
        for job in list(self._running):
            self._end_with_error(job, failure)

    def _shutdown(self) -> None:
        failure = RequestError("the server is shutting down", status=503, type="server_error", code="shutting_down")
        for job in list(self._running):
            self._end_with_error(job, failure)
        with self._wake:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for job in waiting:
            job.ended = True
            job.emit("error", failure)
