"""Training with Keras `fit`: defaults chosen from the data, a length in steps, epochs or seconds, poly
learning-rate decay over that length, validation and checkpoints at a rate that costs a small share of the
run, the best checkpoint by validation mIoU, CSV and TensorBoard logs, and resumption after a kill.

    result = kseg.training.train(kseg.training.TrainConfig(data="my_folder", time_budget=120, out_dir="runs/a"))

Settings left at None are chosen by `kseg.training.recipe.choose` from the data, printed, and stored in the run's
`config.json` (which `kseg train --config` takes back, to repeat a run). Keras "epochs" here are rounds
of `val_every` steps: each round ends with a validation, a checkpoint and a backup, however few images
there are. Run the same config again with the same `out_dir` after an interruption and it resumes from
the last finished round (model, optimizer state, step and time spent included).

`distribute="multiworker"` trains on several machines (`kseg.training.distribute`): the batch size is then per
worker, a step takes batch_size x workers images, and the chief alone writes `out_dir`.
"""

import csv
import dataclasses
import json
import math
import os
import statistics
import tempfile
import time
import warnings

import keras
import tensorflow as tf

import kseg
from kseg import files, provenance
from kseg.errors import KsegError
from kseg.training import distribute, recipe

OPTIMIZERS = ("adam", "adamw", "sgd")
DISTRIBUTIONS = ("mirrored", "multiworker")
VALIDATIONS = 10  # validations per run, when they are cheap enough
OVERHEAD_SHARE = 0.05  # validation + checkpoints may take this share of a round, at most
WARMUP_STEPS = 4  # timed steps before the run (after the first, which traces): they size the rounds


@dataclasses.dataclass
class TrainConfig:
    model: str = "auto"  # an architecture name, or "auto": chosen from the data
    model_kwargs: dict | None = None  # builder arguments; None: the width chosen for the data size
    data: str = "synthetic"  # "synthetic", "tfds:NAME" or a folder
    data_options: dict = dataclasses.field(default_factory=dict)  # e.g. {"num_images": 64} for synthetic
    val_data: str | None = None  # defaults to the "val" split of `data` (a fifth of a folder without val/)
    num_classes: int | None = None  # defaults to the data's
    crop_size: tuple | None = None  # None: from the images (up to 256x256)
    batch_size: int | None = None  # None: about 4 x 256 x 256 pixels a step
    steps: int | None = None  # training length: total steps, or
    epochs: float | None = None  # passes over the training data, or
    time_budget: float | None = None  # wall-clock seconds (whichever of the given limits comes first)
    steps_per_epoch: int | None = None  # with epochs: an epoch is this many steps (and validates)
    val_every: int | None = None  # steps between validations; None: about 10 a run, each < 5% of its round
    optimizer: str = "adam"
    learning_rate: float | None = None  # None: 1e-3
    weight_decay: float = 0.0
    poly_power: float = 0.9
    loss: str | None = None  # None: from the class balance (see kseg.training.recipe)
    augment: str | None = None  # "natural", "topdown" or "none"; None: from the images
    seed: int = 0
    mixed_precision: str | None = None  # "mixed_float16" (GPU) or "mixed_bfloat16" (recent CPUs, TPU)
    distribute: str | None = None  # "mirrored": every local GPU (or the CPU); "multiworker": machines in TF_CONFIG
    out_dir: str = "runs/kseg"
    overwrite: bool = False  # start afresh in an out_dir that holds a finished run
    verbose: int = 1

    @classmethod
    def from_json(cls, path, **overrides):
        """The config a run stored in its `config.json` (to repeat it), with `overrides` applied."""
        try:
            with open(path) as f:
                stored = json.load(f)
        except (OSError, ValueError) as error:
            raise KsegError(f"{path}: cannot read a training config ({error})") from None
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: (tuple(v) if k == "crop_size" and v else v) for k, v in stored.items() if k in fields}
        return cls(**{**values, **overrides})


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    history: dict
    best_path: str
    last_path: str
    initial_epoch: int
    summary: dict = dataclasses.field(default_factory=dict)
    worker_weights: str | None = None  # multi-worker, on the other workers: their final weights (a temporary file)


def save_atomic(model, path):
    """`model.save(path)` through a temporary file in the same folder and an atomic rename."""
    tmp = path[: -len(".keras")] + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)


class AtomicBestCheckpoint(keras.callbacks.Callback):
    """Saves the model as `.keras` when `monitor` improves; writes a temporary file, then renames it,
    so a kill during the save never leaves a broken checkpoint under the final name."""

    def __init__(self, path, monitor="val_miou", best=None):
        super().__init__()
        self.path, self.monitor = path, monitor
        self.best = -float("inf") if best is None else best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value > self.best:
            self.best = float(value)
            save_atomic(self.model, self.path)


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

    def __init__(self, learning_rate, power, started, total_steps=None, time_budget=None, steps_before=0,
                 seconds_before=0.0, reserve=0.0, final_save=0.0, agree=None):
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
            fractions.append(self.elapsed() / max(self.time_budget - self.reserve, 1e-9))
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


class _BatchTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.train = [time.monotonic()]

    def on_train_batch_end(self, batch, logs=None):
        self.train.append(time.monotonic())


def _optimizer(config):
    if config.optimizer == "adam":
        return keras.optimizers.Adam(config.learning_rate)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay or 1e-4)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(config.learning_rate, momentum=0.9, weight_decay=config.weight_decay or None)
    raise KsegError(f"unknown optimizer {config.optimizer!r}; available: {', '.join(OPTIMIZERS)}")


def build_and_compile(config, num_classes):
    model = kseg.models.get(config.model, num_classes, input_shape=(None, None, 3), **(config.model_kwargs or {}))
    loss = kseg.losses.get(config.loss)
    metric_classes = 2 if num_classes == 1 else num_classes
    model.compile(
        optimizer=_optimizer(config),
        loss=loss,
        metrics=[kseg.metrics.SegmentationMetrics(metric_classes)],
    )
    # Optimizer variables made now, not inside the first traced step: TensorFlow would trace it twice.
    model.optimizer.build(model.trainable_variables)
    return model


def resolve(config, train_split, workers=1):
    """(config with every unset field chosen, {field: Choice}): the settings a run will use.

    `workers`: machines sharing each step (multi-worker), each taking `batch_size` images of it.
    """
    choices = recipe.choose(config, train_split)
    resolved = dataclasses.replace(config, **{name: choice.value for name, choice in choices.items()})
    if resolved.augment not in kseg.data.AUGMENTATIONS:
        raise KsegError(f"unknown augmentation {resolved.augment!r}; available: {', '.join(kseg.data.AUGMENTATIONS)}")
    for name in ("steps", "epochs", "time_budget", "val_every", "batch_size", "steps_per_epoch"):
        value = getattr(resolved, name)
        if value is not None and value <= 0:
            raise KsegError(f"{name} must be positive, got {value}")
    if resolved.steps is None and resolved.epochs is not None:
        per_epoch = resolved.steps_per_epoch or max(len(train_split) // (resolved.batch_size * workers), 1)
        resolved.steps = math.ceil(resolved.epochs * per_epoch)
        if resolved.steps_per_epoch and resolved.val_every is None:
            resolved.val_every = resolved.steps_per_epoch
    return resolved, choices


def _describe(config, choices, num_classes, train_split, val_split, cluster=None):
    length = [f"{config.steps} steps"] if config.steps else []
    if config.time_budget:
        length.append(f"{config.time_budget:g} s")
    kwargs = ", ".join(f"{k}={v}" for k, v in (config.model_kwargs or {}).items())
    rows = [
        ("data", f"{train_split.description}: {len(train_split)} training, {len(val_split)} validation images, "
                 f"{num_classes} classes"),
        ("model", f"{config.model}({kwargs})" if kwargs else config.model, "model", "model_kwargs"),
        ("crop", "x".join(map(str, config.crop_size)), "crop_size"),
        ("batch", f"{config.batch_size} per worker x {cluster.workers} workers" if cluster else str(config.batch_size),
         "batch_size"),
        ("length", " or ".join(length) + " (whichever comes first)" * (len(length) > 1), "steps"),
        ("optimizer", f"{config.optimizer}, learning rate {config.learning_rate:g}, poly {config.poly_power} to 0",
         "learning_rate"),
        ("loss", config.loss, "loss"),
        ("augment", config.augment, "augment"),
    ]
    lines = ["kseg train: settings (chosen ones marked *, each can be set; stored in config.json)"]
    for label, value, *fields in rows:
        reason = next((choices[f].reason for f in fields if f in choices), None)
        lines.append(f"  {'*' if reason else ' '} {label:10s} {value}" + (f"  ({reason})" if reason else ""))
    return "\n".join(lines)


def _resume_state(out_dir):
    """(rounds already finished, best val_miou, seconds spent) from a previous run in `out_dir`.

    Rows of log.csv past the backup's last round belong to a round that runs again: they are dropped.
    """
    metadata = os.path.join(out_dir, "backup", "training_metadata.json")
    epoch = 0
    if os.path.exists(metadata):
        with open(metadata) as f:
            epoch = int(json.load(f)["epoch"])  # BackupAndRestore stores the count of finished rounds
    log, best, seconds = os.path.join(out_dir, "log.csv"), None, 0.0
    if os.path.exists(log):
        with open(log, newline="") as f:
            rows = [row for row in csv.DictReader(f) if int(row["epoch"]) < epoch]
        if rows:
            best = max(float(row["val_miou"]) for row in rows if row.get("val_miou"))
            seconds = float(rows[-1].get("seconds") or 0.0)
            with open(log, "w", newline="") as f:  # drop rows of a round the backup does not hold
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        else:
            os.remove(log)
    return epoch, best, seconds


def _measure(model, train_batches, val_batches, val_count, batch_size):
    """(seconds per training step, per validation with its two checkpoint saves, per model save), timed on
    WARMUP_STEPS real steps, one validation batch and one save, each after a first call that traces."""
    times = _BatchTimes()
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


def _rounds(step_seconds, overhead_seconds, steps_left, seconds_left):
    """Steps per round: about VALIDATIONS rounds, each validation at most OVERHEAD_SHARE of its round."""
    expected = [s for s in (steps_left, seconds_left and seconds_left / step_seconds) if s]
    expected = max(1, int(min(expected)))
    by_count = expected / VALIDATIONS
    by_cost = overhead_seconds / (OVERHEAD_SHARE * step_seconds)
    return max(1, min(expected, math.ceil(max(by_count, by_cost))))


def train(config, callbacks=()):
    """Trains `config.model` on `config.data`; returns a TrainResult. Resumes if `out_dir` holds a run.

    The run folder is locked while it trains: a second `train` on the same `out_dir` raises a KsegError
    naming the process that holds it (a lock left by a killed process is taken over). With several
    workers only the chief locks and writes it.
    """
    started = time.monotonic()
    if config.distribute is not None and config.distribute not in DISTRIBUTIONS:
        raise KsegError(f"unknown distribution {config.distribute!r}; available: {', '.join(DISTRIBUTIONS)}")
    if config.distribute and keras.backend.backend() != "tensorflow":
        raise KsegError(distribute.unsupported_backend())
    # The multi-worker strategy must exist before TensorFlow runs anything (collectives are set up at startup).
    cluster = distribute.multiworker() if config.distribute == "multiworker" else None
    try:
        if cluster and not cluster.is_chief:
            return _train(config, callbacks, started, cluster)
        with files.FolderLock(config.out_dir, "kseg train"):
            return _train(config, callbacks, started, cluster)
    except (tf.errors.UnavailableError, tf.errors.AbortedError) as error:
        if cluster is None:
            raise
        raise KsegError(distribute.lost_worker(error, config.out_dir)) from error


def _train(config, callbacks, started, cluster=None):
    chief = cluster is None or cluster.is_chief
    workers = cluster.workers if cluster else 1
    best_path = os.path.join(config.out_dir, "best.keras")
    last_path = os.path.join(config.out_dir, "last.keras")
    config_path = os.path.join(config.out_dir, "config.json")
    finished = chief and os.path.exists(last_path) and not os.path.isdir(os.path.join(config.out_dir, "backup"))
    if cluster:  # what the chief finds in its run folder decides for every worker
        finished = bool(cluster.broadcast([finished])[0])
    if finished and not config.overwrite:
        raise KsegError(f"{config.out_dir} holds a finished run; choose another output folder or pass --overwrite")
    if finished and chief:
        for name in ("best.keras", "last.keras", "log.csv", "summary.json"):
            if os.path.exists(os.path.join(config.out_dir, name)):
                os.remove(os.path.join(config.out_dir, name))
    if chief:
        os.makedirs(config.out_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(config.mixed_precision)

    train_split = kseg.data.load(config.data, "train", num_classes=config.num_classes, **config.data_options)
    val_split = kseg.data.load(
        config.val_data or config.data, "val", num_classes=config.num_classes, **config.data_options
    )
    num_classes = config.num_classes or train_split.num_classes
    initial_epoch, best, seconds_before = _resume_state(config.out_dir) if chief else (0, None, 0.0)
    stored = {}
    if initial_epoch and os.path.exists(config_path):
        with open(config_path) as f:  # a resumed run keeps its rounds, or the backup's count means nothing
            stored = json.load(f)
    if cluster:  # the other workers resume from the chief's state (SyncFromChief gives them its weights)
        initial_epoch, seconds_before, val_every, timing_steps = cluster.broadcast(
            [initial_epoch, seconds_before, stored.get("val_every") or 0, stored.get("timing_steps", 0)])
        initial_epoch = int(initial_epoch)
        stored = {"val_every": int(val_every) or None, "timing_steps": int(timing_steps)} if initial_epoch else {}
    if initial_epoch and config.val_every is None:
        config = dataclasses.replace(config, val_every=stored.get("val_every"))
    config, choices = resolve(config, train_split, workers)
    print(_describe(config, choices, num_classes, train_split, val_split, cluster), flush=True)  # whatever verbosity
    if cluster:
        print(f"kseg: {cluster}; " + ("writing " + config.out_dir if chief else "the chief writes the run folder"),
              flush=True)

    augment = kseg.data.AUGMENTATIONS[config.augment]
    global_batch = config.batch_size * workers

    # Cache decoded crops in memory when a streamed split fits in about 2 GiB (16 bytes a pixel, decoded).
    fits = not train_split.in_memory and len(train_split) * math.prod(config.crop_size) * 16 < 2**31

    def batches(cache=fits):
        if not cluster:
            train = kseg.data.pipeline(train_split, config.batch_size, size=tuple(config.crop_size), training=True,
                                       seed=config.seed, repeat=True, cache=cache, **augment)
            return train, kseg.data.pipeline(val_split, config.batch_size, cache=cache)
        # Each worker reads its own share of the images, in global batches that tf.distribute splits into
        # per-worker ones (sharding "OFF": already done). Validation batches are split between the workers
        # ("DATA"): as many steps as with the global batch, each as small as that allows, so that the few
        # blank examples that make every worker's part whole (`distribute.pad`) are as few as possible.
        own = distribute.shard(train_split, workers, cluster.index)
        train = kseg.data.pipeline(own, global_batch, size=tuple(config.crop_size),
                                   training=True, seed=config.seed + distribute.WORKER_SEED_STRIDE * cluster.index,
                                   repeat=True, cache=cache, **augment)
        val_steps = math.ceil(len(val_split) / global_batch)
        val_batch = workers * math.ceil(len(val_split) / (workers * val_steps))
        val = kseg.data.pipeline(distribute.pad(val_split, val_batch), val_batch, cache=cache)
        return distribute.with_sharding(train, "OFF"), distribute.with_sharding(val, "DATA")

    train_batches, val_batches = batches()

    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")  # our datasets are shuffled
    if cluster:
        strategy = cluster.strategy
    else:
        strategy = tf.distribute.MirroredStrategy() if config.distribute == "mirrored" else tf.distribute.get_strategy()
    with strategy.scope():
        model = build_and_compile(config, num_classes)
        model.build((None, None, None, 3))

    steps_before, overhead_s, save_s = stored.get("timing_steps", 0), 0.0, 0.0
    if config.val_every is None or not initial_epoch:
        # Timed on uncached copies: a partly read cache is thrown away (with a warning). Every worker takes
        # part (the steps are collective); the chief's timing sizes the rounds.
        step_s, overhead_s, save_s = _measure(model, *batches(cache=False), len(val_split), global_batch)
        steps_before = WARMUP_STEPS + 1
        if config.val_every is None:
            seconds_left = config.time_budget and config.time_budget - (time.monotonic() - started)
            config.val_every = _rounds(step_s, overhead_s, config.steps, seconds_left)
            if cluster:
                config.val_every = int(cluster.broadcast([config.val_every])[0])
    if chief:
        files.write_json(config_path, {**dataclasses.asdict(config), "num_classes": num_classes,
                                       "class_names": train_split.class_names,
                                       "chosen": {name: choice.reason for name, choice in choices.items()},
                                       "timing_steps": steps_before})
        for checkpoint in (best_path, last_path):  # what made them, should they leave the run folder
            provenance.write_keras_sidecar(checkpoint, config.model, config.model_kwargs, num_classes=num_classes,
                                           class_names=train_split.class_names, data=config.data,
                                           crop_size=list(config.crop_size))
    rounds = math.ceil(max(config.steps - steps_before, 1) / config.val_every) if config.steps else 10**9
    steps_before += initial_epoch * config.val_every
    if initial_epoch:
        print(f"kseg: resuming {config.out_dir} after round {initial_epoch} (step {steps_before}, "
              f"{seconds_before:.0f} s spent)", flush=True)
    print(f"kseg: validating and saving every {config.val_every} steps", flush=True)

    schedule = Schedule(config.learning_rate, config.poly_power, started, config.steps, config.time_budget,
                        steps_before, seconds_before, overhead_s + save_s, save_s,
                        agree=cluster.broadcast if cluster else None)
    # Step and time into the logs first; the log row and best checkpoint before the backup. Only the chief
    # writes; callbacks that take part in collectives (Schedule, SyncFromChief) run on every worker.
    run_callbacks = [schedule]
    if chief:
        run_callbacks += [
            keras.callbacks.CSVLogger(os.path.join(config.out_dir, "log.csv"), append=True),
            AtomicBestCheckpoint(best_path, "val_miou", best),
            keras.callbacks.BackupAndRestore(os.path.join(config.out_dir, "backup"), double_checkpoint=True),
            keras.callbacks.TensorBoard(os.path.join(config.out_dir, "tensorboard"), write_graph=False),
        ]
    if cluster and initial_epoch:
        run_callbacks.append(distribute.SyncFromChief(cluster))  # after the chief's BackupAndRestore
    history = model.fit(
        train_batches,
        validation_data=val_batches,
        epochs=rounds,
        initial_epoch=initial_epoch,
        steps_per_epoch=config.val_every,
        callbacks=[*run_callbacks, *callbacks],
        verbose=config.verbose if chief else 0,
    )
    summary = _summary(config, schedule, history.history, started, workers)
    if not chief:  # its final weights, in a temporary folder: the run folder is the chief's
        worker_weights = os.path.join(tempfile.mkdtemp(prefix=f"kseg-worker{cluster.index}-"), "last.weights.h5")
        model.save_weights(worker_weights)
        print(f"kseg: {cluster} trained {summary['steps']} steps; its final weights: {worker_weights}", flush=True)
        return TrainResult(model, history.history, best_path, last_path, initial_epoch, summary, worker_weights)
    save_atomic(model, last_path)
    if not os.path.exists(best_path):  # e.g. resumed after the last round: keep the contract
        save_atomic(model, best_path)
    files.write_json(os.path.join(config.out_dir, "summary.json"), summary)
    print(f"kseg: trained {summary['steps']} steps in {summary['seconds']:.0f} s "
          f"({summary['images_per_second']:.1f} images/s); validation and checkpoints took "
          f"{100 * summary['overhead_share']:.1f}% of the run; best val mIoU {100 * summary['best_val_miou']:.2f}",
          flush=True)
    return TrainResult(model, history.history, best_path, last_path, initial_epoch, summary)


def _summary(config, schedule, history, started, workers=1):
    """This session's numbers: steps, seconds, training speed (images/s over all workers) and the share
    validation and saving took."""
    seconds = time.monotonic() - started
    miou = [m for m in history.get("val_miou", []) if m is not None]
    return {
        "steps": schedule.step,
        "seconds": schedule.seconds_before + seconds,
        "session_seconds": seconds,
        "images_per_second": (schedule.step - schedule.first_step) * config.batch_size * workers
        / max(seconds - schedule.overhead, 1e-9),
        "overhead_seconds": schedule.overhead,
        "overhead_share": schedule.overhead / max(seconds, 1e-9),
        "rounds": schedule.rounds,
        "best_val_miou": max(miou) if miou else float("nan"),
        "stopped_by": schedule.stopped_by,
        "workers": workers,
    }
