"""Progress lines: within an epoch (a Keras callback on the public API), per epoch, per sweep."""

import sys
import time

import keras


def duration(seconds):
    """'1h05m', '3m07s', '12s'."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class StepProgress(keras.callbacks.Callback):
    """One line every `every` seconds during an epoch (step, loss, images/s, time left),
    and the epoch's training and validation seconds.

    On a terminal the line updates in place each second. `async_safe`: Keras then calls
    the batch hook from a thread, so the training loop never waits for it (Keras' own
    progress bar is not, and makes every step wait for the device).
    """

    async_safe = True  # FIDELITY.md B5

    def __init__(self, label, batch_size, every=None, stream=None):
        super().__init__()
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.label, self.batch_size = label, batch_size
        self.every = every if every is not None else (1.0 if self.live else 60.0)

    def on_epoch_begin(self, epoch, logs=None):
        self.start = self.last = self.val_start = time.perf_counter()
        self.train_s = self.val_s = 0.0
        self.first = None  # the end of the first step: tracing and compiling are before it

    def on_test_begin(self, logs=None):
        self.val_start = time.perf_counter()
        self.train_s = self.val_start - self.start

    def on_test_end(self, logs=None):
        self.val_s = time.perf_counter() - self.val_start

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self.first is None:
            self.first = (batch + 1, now)
        if now - self.last < self.every or not logs:
            return
        self.last = now
        steps = self.params.get("steps") or 0
        done = batch + 1
        # Rate and time left from the steps after the first, whose time is mostly tracing
        # and compiling (FIDELITY.md B5): no "0 img/s, 1h06m left" after a slow first step.
        since, at = self.first
        if done > since:
            per_step = (now - at) / (done - since)
            speed = (f"{self.batch_size / per_step:.0f} img/s, "
                     f"{duration((steps - done) * per_step)} left" if steps else "")
        else:
            speed = f"first step {duration(now - self.start)} (tracing)"
        text = f"{self.label} step {done}/{steps} loss {float(logs['loss']):.4f}, {speed}"
        self.stream.write(("\r" + text + "\033[K") if self.live else text + "\n")
        self.stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        if not self.train_s:  # no validation pass
            self.train_s = time.perf_counter() - self.start
        if self.live and self.last != self.start:
            self.stream.write("\r\033[K")
            self.stream.flush()


def epoch_line(label, row, train_images, val_images):
    """The line logged after each epoch, from its history row."""
    secs = row["time_s"]
    val = f", val {row['val_loss']:.4f}" if "val_loss" in row else ""
    acc = (f", final acc {row['final_accuracy']:.3f}/{row.get('val_final_accuracy', 0):.3f}"
           if "final_accuracy" in row else "")
    # The epoch's time is split so that its parts add up: Keras' set-up of fit (data
    # adapters, function building) is outside training and validation (FIDELITY.md B5).
    other = secs - row["train_s"] - row["val_s"]
    return (f"{label} loss {row['loss']:.4f}{val}{acc} ({duration(secs)}: "
            f"{duration(row['train_s'])} train at {train_images / max(row['train_s'], 1e-9):.0f}"
            f" img/s, {duration(row['val_s'])} val at "
            f"{val_images / max(row['val_s'], 1e-9):.0f} img/s"
            + (f", {duration(other)} set-up" if other >= 1 else "") + ")")


class SweepClock:
    """Start and end of each run of a sweep with its duration, and the time left."""

    def __init__(self, total, parallel=1, log=print):
        self.total, self.parallel, self.log = total, max(1, parallel), log
        self.start, self.durations, self.ended = time.time(), [], 0

    def started(self, name, index):
        self.log(f"=== [{index}/{self.total}] {name} started" + self._left())

    def ended_run(self, name, seconds, outcome="finished", trained=True):
        self.ended += 1
        if trained:
            self.durations.append(seconds)
        self.log(f"=== {name} {outcome} in {duration(seconds)} "
                 f"({self.ended}/{self.total} ended)" + self._left())

    def _left(self):
        remaining = self.total - self.ended
        if not self.durations or remaining <= 0:
            return ""
        mean = sum(self.durations) / len(self.durations)
        return f"; about {duration(mean * remaining / self.parallel)} left"

