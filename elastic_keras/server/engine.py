"""The batching core: a queue per segment, batches across requests, deadlines, audits.

Plain Python and NumPy over an export's segments (each: features -> probabilities,
confidence, the features the next one reads); no HTTP. One worker thread runs every segment,
so that the runtime's own threads have the cores (FIDELITY.md S2).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from elastic_keras.errors import ElasticKerasError
from elastic_keras.server.jobs import Chunk, Job, gather, passed_on
from elastic_keras.server.routing import answer, by_job, late, route


class QueueFull(Exception):
    """More images than --max-queue would be waiting: the request is refused at once."""


class Engine:
    """Requests in, answers out, every segment on as full a batch as the traffic allows.

    segments: callables features -> (probabilities, confidence, features thunk or None);
    criterion: "max_prob" (leave when confidence >= threshold) or "entropy" (<=);
    threshold: the one in force without online control; costs: each segment's p95 seconds per
    batch of max_batch (deadlines); control: an inference.online.Controller (its threshold is
    then the one in force) with `audit` its audit coin; hooks: what metrics are told;
    fusion: a fusion.TailPlan (small batches past segment 1 in one call: FIDELITY.md S9).
    """

    def __init__(self, segments, classes: int, criterion="max_prob", threshold=2.0,
                 max_batch=32, max_wait_ms=5.0, max_queue=1024, costs=None, control=None,
                 seed=0, hooks=None, fusion=None):
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ElasticKerasError(f"--max-batch and --max-queue must be >= 1 and "
                                    f"--max-wait-ms >= 0, got {max_batch}, {max_queue}, "
                                    f"{max_wait_ms}")
        self.segments, self.classes, self.criterion = list(segments), classes, criterion
        self.default_threshold = float(threshold)
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self.costs = list(costs) if costs else [0.0] * len(self.segments)
        self.control, self.hooks, self.fusion = control, hooks, fusion
        self.rng = np.random.default_rng(seed)  # the audit coins
        self._queues: list[list[Chunk]] = [[] for _ in self.segments]
        self._rows = [0] * len(self.segments)
        self.pending = 0  # answers owed (rows of unfinished jobs, audits not counted)
        self.audits_in_flight = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="elastic-engine", daemon=True)
        self._thread.start()

    # -- the HTTP side ---------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """The threshold in force: online control's, else the server's."""
        return self.control.threshold if self.control is not None else self.default_threshold

    def submit(self, images, threshold=None, deadline_ms=None, max_exit=None,
               request_id=None) -> Job:
        """Queue a request's images (uint8, N x H x W x C) at the first segment; its Job's
        future resolves when the last has left. QueueFull when over --max-queue."""
        job = Job(len(images), self.classes, threshold,
                  None if deadline_ms is None else time.monotonic() + deadline_ms / 1000,
                  max_exit, request_id, len(self.segments))
        chunk = Chunk.of(job, images)
        with self._cond:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if self.pending + len(images) > self.max_queue:
                raise QueueFull(f"{self.pending} images are waiting (--max-queue "
                                f"{self.max_queue})")
            self.pending += len(images)
            self._push(0, chunk)
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: its images not yet answered leave the queues unrun (its
        audits go on)."""
        with self._cond:
            job.cancelled = True
            self._cond.notify()

    def depths(self) -> list[int]:
        """Rows waiting at each segment."""
        with self._cond:
            return list(self._rows)

    def locked(self, fn, *args):
        """Call `fn` under the engine's lock (online control is not thread-safe)."""
        with self._cond:
            return fn(*args)

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, answer every image queued (no more waiting for fuller
        batches), then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    # -- the worker --------------------------------------------------------------------------
    def _push(self, k: int, chunk: Chunk) -> None:
        self._queues[k].append(chunk)
        self._rows[k] += len(chunk)
        self._cond.notify()

    def _pick(self, now: float):
        """(segment to run, seconds to wait). The deepest segment whose queue is full or
        whose oldest row has waited --max-wait-ms; else, work-conserving, the deepest
        segment past the first with rows (the worker would idle otherwise); else the first
        segment's queue waits out its window (FIDELITY.md S2)."""
        busy = [k for k in range(len(self._queues)) if self._queues[k]]
        if not busy:
            return None, None
        for k in reversed(busy):
            if (self._rows[k] >= self.max_batch or self._closing
                    or now - self._queues[k][0].arrived >= self.max_wait):
                return k, 0.0
        if busy[-1] > 0:
            return busy[-1], 0.0
        return None, self._queues[0][0].arrived + self.max_wait - now

    def _take(self, k: int) -> list[Chunk]:
        """Up to max_batch rows from segment k's queue, oldest first."""
        queue, taken, rows = self._queues[k], [], 0
        while queue and rows < self.max_batch:
            chunk = queue.pop(0)
            self._rows[k] -= len(chunk)
            room = self.max_batch - rows
            if len(chunk) > room:
                rest = chunk.take(slice(room, None))
                chunk = chunk.take(slice(0, room))
                queue.insert(0, rest)
                self._rows[k] += len(rest)
            taken.append(chunk)
            rows += len(chunk)
        return taken

    def _prepare(self, k: int, batch: Chunk, done: list) -> Chunk:
        """Drop the rows of cancelled requests (not their audits); the rows whose deadline
        segment k cannot meet leave at exit k (forced: FIDELITY.md S4)."""
        gone = np.array([j.cancelled for j in batch.jobs])[batch.owner] & ~batch.audit
        if gone.any():
            for job, part in by_job(batch, gone):
                job.left -= len(part)
                if job.left == 0:
                    done.append(job)
            self.pending -= int(gone.sum())
            batch = batch.take(~gone)
        if k > 0 and len(batch):
            forced = late(batch, time.monotonic(), self.costs[k])
            if forced.any():
                done += answer(self, batch, forced, batch.probs, k, forced=True)
                batch = batch.take(~forced)
        return batch

    def _loop(self) -> None:
        while True:
            done: list[Job] = []
            with self._cond:
                while True:
                    k, wait = self._pick(time.monotonic())
                    if k is not None or (self._closing and not any(self._rows)):
                        break
                    self._cond.wait(wait)
                if k is None:
                    return
                batch = self._prepare(k, gather(self._take(k)), done)
            for job in done:
                job.finish()
            if len(batch):
                self._run(k, batch)

    def _run(self, k: int, batch: Chunk) -> None:
        """Segment k on the batch; who leaves is answered, the others go on."""
        if (self.fusion is not None and self.fusion.use(k, len(batch))
                and all(j.deadline is None and j.max_exit is None for j in batch.jobs)):
            return self._run_tail(k, batch)
        try:
            probs, conf, features = self.segments[k](batch.features)
        except Exception as e:  # the runtime failed: every request of the batch gets it
            self._fail(batch, e)
            return
        if self.hooks:
            self.hooks.on_batch(k, len(batch))
        done: list[Job] = []
        with self._cond:
            going, done = route(self, k, batch, probs, conf)
            if going is not None:
                chunk, index = going
                chunk.features = passed_on(features, copy=False)[index]
                self._enqueue(k + 1, chunk, done)
        for job in done:
            job.finish()

    def _run_tail(self, k: int, batch: Chunk) -> None:
        """Segments k..last on the batch in one call (fusion.py); the exit rule then routes
        the rows exit by exit as if each segment had run, so the answers are the same."""
        try:
            outputs = self.fusion.runs[k](batch.features)
        except Exception as e:
            self._fail(batch, e)
            return
        if self.hooks:  # every segment of the tail ran on every row
            for j in range(k, len(self.segments)):
                self.hooks.on_batch(j, len(batch), fused=True)
        done: list[Job] = []
        at = np.arange(len(batch))  # the rows still routed, as rows of `outputs`
        with self._cond:
            for j, (probs, conf) in enumerate(outputs, k):
                going, finished = route(self, j, batch, probs[at],
                                        None if conf is None else conf[at])
                done += finished
                if going is None:
                    break
                batch, at = going[0], at[going[1]]
        for job in done:
            job.finish()

    def _enqueue(self, k: int, chunk: Chunk, done: list) -> None:
        """Rows going on to segment k; those whose deadline the queue ahead of them and the
        segment cannot meet leave at exit k now (forced: FIDELITY.md S4)."""
        batches = (self._rows[k] + len(chunk)) // self.max_batch + 1
        forced = late(chunk, time.monotonic(), batches * self.costs[k])
        if forced.any():
            done += answer(self, chunk, forced, chunk.probs, k, forced=True)
            chunk = chunk.take(~forced)
        if len(chunk):
            self._push(k, chunk)

    def _fail(self, batch: Chunk, error) -> None:
        with self._cond:
            answered = int((~batch.audit).sum())
            self.pending -= answered
            self.audits_in_flight -= len(batch) - answered
            for job in batch.jobs:
                if not job.future.done():
                    job.future.set_exception(error)
