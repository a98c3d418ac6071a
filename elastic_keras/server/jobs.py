"""What the batching core holds: a request's images (Job) and rows waiting at a segment (Chunk)."""

from __future__ import annotations

import itertools
import math
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

_ids = itertools.count()


def passed_on(features, copy=True):
    """What a segment passes to the next (its third output, called) as a NumPy array: of its
    own, or with `copy` False perhaps a view of the runtime's buffer (LiteRT's), valid until
    that segment runs again (the engine indexes it, a copy, at once); None after the last."""
    f = None if features is None else features()
    if f is None:
        return None
    return f.numpy() if hasattr(f, "numpy") else np.array(f) if copy else np.asarray(f)


@dataclass(eq=False)
class Job:
    """One request: its images' answers as they leave, and the future that resolves when the
    last one has left. `threshold` None: the one in force (online control may move it);
    `deadline` (monotonic seconds) and `max_exit` (1-based) as the request asked."""

    images: int
    classes_count: int
    threshold: float | None = None
    deadline: float | None = None
    max_exit: int | None = None
    request_id: str | None = None
    last_exit: int = 0
    start: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    cancelled: bool = False
    number: int = field(default_factory=lambda: next(_ids))

    def __post_init__(self):
        n = self.images
        self.probabilities = np.zeros((n, self.classes_count), np.float32)
        self.classes = np.zeros(n, np.int32)
        self.exits = np.zeros(n, np.int32)
        self.forced = np.zeros(n, bool)
        self.tickets = np.full(n, -1, np.int64)  # online control's ticket per image (-1: none)
        self.finals = np.full(n, -1, np.int32)  # an audited image's final-exit class
        self.left = n

    @property
    def controlled(self) -> bool:
        """Served at the threshold in force (fed to online control, eligible for audit)."""
        return self.threshold is None and self.max_exit is None and self.deadline is None

    def answer(self, rows, probs, exit_number: int, forced=False) -> bool:
        """Record the answers of `rows` leaving at `exit_number`; True when the job is done."""
        self.probabilities[rows] = probs
        self.classes[rows] = probs.argmax(axis=1)
        self.exits[rows] = exit_number
        self.forced[rows] = forced
        self.left -= len(rows)
        return self.left == 0

    def finish(self) -> None:
        if not self.future.done():
            self.future.set_result(self)


@dataclass(eq=False)
class Chunk:
    """Rows waiting at a segment, of one job or many: each row's job (`owner`, an index into
    `jobs`), its image in that job, its features, the probabilities of the last exit it
    passed (a deadline may make it leave there), whether it is an audit (answered already,
    going on to the final exit for online control), and per row what its job asks
    (threshold, in float32 as the exit rule compares; max_exit; deadline)."""

    jobs: list
    owner: np.ndarray
    rows: np.ndarray
    features: np.ndarray
    probs: np.ndarray | None
    audit: np.ndarray
    arrived: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, job: Job, images) -> Chunk:
        n = len(images)
        return cls([job], np.zeros(n, np.int64), np.arange(n), images, None, np.zeros(n, bool))

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index) -> Chunk:
        """The rows at `index` (a slice, mask or indices), with the same jobs."""
        return Chunk(self.jobs, self.owner[index], self.rows[index], self.features[index],
                     None if self.probs is None else self.probs[index], self.audit[index],
                     self.arrived)

    def asks(self, key: str, default: float):
        """Per row, its job's `key` (threshold, max_exit, deadline), `default` where unset;
        `default` itself where no job sets it (most batches: one comparison, no array)."""
        values = [getattr(j, key) for j in self.jobs]
        if all(v is None for v in values):
            return default
        table = np.array([default if v is None else v for v in values], np.float64)
        return table[self.owner]


def gather(chunks: list[Chunk]) -> Chunk:
    """One batch from chunks, oldest first: their rows in one chunk."""
    if len(chunks) == 1:
        return chunks[0]
    jobs, offsets, at = [], [], 0
    for c in chunks:
        offsets.append(at)
        jobs += c.jobs
        at += len(c.jobs)
    probs = None if any(c.probs is None for c in chunks) else np.concatenate(
        [c.probs for c in chunks])
    return Chunk(jobs, np.concatenate([c.owner + o for c, o in zip(chunks, offsets)]),
                 np.concatenate([c.rows for c in chunks]),
                 np.concatenate([c.features for c in chunks]), probs,
                 np.concatenate([c.audit for c in chunks]), chunks[0].arrived)


NO_DEADLINE = math.inf
