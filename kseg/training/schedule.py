"""A run's length and pace: poly learning-rate decay over steps or seconds (`Schedule`), the timing of a few
real steps before the run (`measure`) and the rounds it is cut into (`steps_per_round`): about VALIDATIONS
validations a run, each costing at most OVERHEAD_SHARE of its round, however few images there are.
"""

import math
import os
import statistics
import tempfile
import time

import keras

VALIDATIONS = 10  # validations per run, when they are cheap enough
OVERHEAD_SHARE = 0.05  # validation + checkpoints may take this share of a round, at most
# Share of a time budget kept free for what follows the last round (summary, process exit) and for a host whose
# load changes after the steps were timed: seen 1.11x of a 30 s budget with another test process on the cores.
BUDGET_MARGIN = 0.05
WARMUP_STEPS = 4  # timed steps before the run (after the first, which traces): they size the rounds


class Schedule(keras.callbacks.Callback):
    """Sets the learning rate from the run's progress - steps done over `total_steps` or seconds spent over
    `time_budget`, whichever is further - with poly decay to 0, and stops the run when either is spent.

    Time counts from `started` (time.monotonic()) plus `seconds_before` (earlier sessions of a resumed run).
    A time-budget run stops early enough for the last validation and saves to end within the budget:
    `reserve` seconds, estimated at first, then 1.25 x the last round's overhead plus `final_save`. Each
    round's step, seconds and learning rate go into the logs
    (log.csv), and `overhead` sums the seconds spent between rounds (validation, checkpoints, backups).

    With several workers, `agree` (`kseg.training.distribute.Cluster.broadcast`) gives every worker the chief's
    progress after each step: all must use the same learning rate and stop at the same step, and a time
    budget read from each worker's own clock would disagree.
    """

    def __init__(self, *, learning_rate: float, power: float, started: float, total_steps: int | None = None,
                 time_budget: float | None = None, steps_before: int = 0, seconds_before: float = 0.0,
                 reserve: float = 0.0, final_save: float = 0.0, agree=None):
        super().__init__()
        self.learning_rate, self.power = learning_rate, power
        self.started, self.seconds_before = started, seconds_before
        self.total_steps, self.time_budget, self.reserve = total_steps, time_budget, reserve
        self.final_save = final_save
        self.step = self.first_step = steps_before
        self.overhead, self.rounds, self._round_ended = 0.0, 0, None
        self.stopped_by, self.current = "steps", learning_rate
        self.agree = agree if time_budget else None  # progress by steps alone is the same on every worker
        self._agreed = None

    def elapsed(self):
        return self.seconds_before + time.monotonic() - self.started

    def progress(self):
        return self._own_progress() if self._agreed is None else self._agreed

    def _own_progress(self):
        fractions = [0.0]
        if self.total_steps:
            fractions.append(self.step / self.total_steps)
        if self.time_budget:
            fractions.append(self.elapsed() / max(self.time_budget * (1 - BUDGET_MARGIN) - self.reserve, 1e-9))
        return min(max(fractions), 1.0)

    def _agree(self):
        if self.agree is not None:
            self._agreed = min(self.agree([self._own_progress()])[0], 1.0)

    def on_train_begin(self, logs=None):
        self._agree()

    def on_epoch_begin(self, epoch, logs=None):
        self._end_of_round()
        self._agree()

    def on_train_batch_begin(self, batch, logs=None):
        self.current = self.learning_rate * (1.0 - self.progress()) ** self.power
        self.model.optimizer.learning_rate = self.current

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self._last_batch = time.monotonic()
        self._agree()
        if self.progress() >= 1.0:
            self.model.stop_training = True
            if not self.total_steps or self.step < self.total_steps:
                self.stopped_by = "time budget"

    def on_epoch_end(self, epoch, logs=None):
        self._round_ended = self._last_batch
        if logs is not None:
            logs.update(step=self.step, seconds=round(self.elapsed(), 2), lr=self.current)

    def on_train_end(self, logs=None):
        self._end_of_round()

    def _end_of_round(self):
        if self._round_ended is not None:
            spent = time.monotonic() - self._round_ended
            self.overhead += spent
            self.rounds += 1
            self.reserve = 1.25 * spent + self.final_save
            self._round_ended = None


class BatchTimes(keras.callbacks.Callback):
    """The time at the end of every training batch (the first entry: when it was made)."""

    def __init__(self):
        super().__init__()
        self.train = [time.monotonic()]

    def on_train_batch_end(self, batch, logs=None):
        self.train.append(time.monotonic())


def measure(model, train_batches, val_batches, *, val_count: int, batch_size: int) -> tuple[float, float, float]:
    """(seconds per training step, per validation with its two checkpoint saves, per model save), timed on
    WARMUP_STEPS real steps, one validation batch and one save, each after a first call that traces."""
    times = BatchTimes()
    model.fit(train_batches, epochs=1, steps_per_epoch=WARMUP_STEPS + 1, verbose=0, callbacks=[times])
    step = statistics.median(b - a for a, b in zip(times.train[1:], times.train[2:]))
    model.evaluate(val_batches.take(1), verbose=0)
    started = time.monotonic()
    model.evaluate(val_batches.take(1), verbose=0)
    val_batch = time.monotonic() - started
    with tempfile.TemporaryDirectory() as folder:
        model.save(os.path.join(folder, "first.keras"))
        started = time.monotonic()
        model.save(os.path.join(folder, "timed.keras"))
        save = time.monotonic() - started
    return step, val_batch * math.ceil(val_count / batch_size) + 2 * save, save


def steps_per_round(step_seconds: float, overhead_seconds: float, steps_left: int | None,
                    seconds_left: float | None) -> int:
    """Steps per round: about VALIDATIONS rounds, each validation at most OVERHEAD_SHARE of its round."""
    bounds = [s for s in (steps_left, seconds_left and seconds_left / step_seconds) if s]
    expected = max(1, int(min(bounds)))
    by_count = expected / VALIDATIONS
    by_cost = overhead_seconds / (OVERHEAD_SHARE * step_seconds)
    return max(1, min(expected, math.ceil(max(by_count, by_cost))))
