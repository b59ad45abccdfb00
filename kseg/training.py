"""Training with Keras `fit`: poly learning-rate decay, kseg losses and metrics, the best checkpoint
by validation mIoU, CSV and TensorBoard logs, and resumption after a kill.

    result = kseg.training.train(kseg.training.TrainConfig(model="unet", epochs=5, out_dir="runs/unet"))

Run the same config again with the same `out_dir` after an interruption and it resumes from the
last finished epoch (model, optimizer state and learning-rate schedule included).
"""

import csv
import dataclasses
import json
import os
import warnings

import keras
import tensorflow as tf

import kseg
from kseg.errors import KsegError

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclasses.dataclass
class TrainConfig:
    model: str = "deeplabv3plus"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    data: str = "synthetic"  # "synthetic", "tfds:NAME" or a folder
    data_options: dict = dataclasses.field(default_factory=dict)  # e.g. {"num_images": 64} for synthetic
    val_data: str | None = None  # defaults to the "val" split of `data`
    num_classes: int | None = None  # defaults to the data's
    crop_size: tuple = (128, 128)
    batch_size: int = 8
    epochs: int = 10
    steps_per_epoch: int | None = None
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    poly_power: float = 0.9
    loss: str = "ce"
    seed: int = 0
    mixed_precision: str | None = None  # "mixed_float16" (GPU) or "mixed_bfloat16" (recent CPUs, TPU)
    distribute: str | None = None  # "mirrored": every local GPU (or the CPU) through tf.distribute
    out_dir: str = "runs/kseg"
    overwrite: bool = False  # start afresh in an out_dir that holds a finished run
    verbose: int = 1


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    history: dict
    best_path: str
    last_path: str
    initial_epoch: int


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


def save_atomic(model, path):
    """`model.save(path)` through a temporary file in the same folder and an atomic rename."""
    tmp = path[: -len(".keras")] + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)


def _optimizer(config, total_steps):
    schedule = keras.optimizers.schedules.PolynomialDecay(
        config.learning_rate, decay_steps=max(total_steps, 1), end_learning_rate=0.0, power=config.poly_power
    )
    if config.optimizer == "adam":
        return keras.optimizers.Adam(schedule)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay or 1e-4)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=config.weight_decay or None)
    raise KsegError(f"unknown optimizer {config.optimizer!r}; available: {', '.join(OPTIMIZERS)}")


def _resume_state(out_dir):
    """(epochs already finished, best val_miou so far) from a previous run in `out_dir`.

    Rows of log.csv past the backup's last epoch belong to an epoch that runs again: they are dropped.
    """
    metadata = os.path.join(out_dir, "backup", "training_metadata.json")
    epoch = 0
    if os.path.exists(metadata):
        with open(metadata) as f:
            epoch = int(json.load(f)["epoch"])  # BackupAndRestore stores the count of finished epochs
    log, best = os.path.join(out_dir, "log.csv"), None
    if os.path.exists(log):
        with open(log, newline="") as f:
            rows = [row for row in csv.DictReader(f) if int(row["epoch"]) < epoch]
        if rows:
            best = max(float(row["val_miou"]) for row in rows if row.get("val_miou"))
            with open(log, "w", newline="") as f:  # drop rows of an epoch the backup does not hold
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        else:
            os.remove(log)
    return epoch, best


def build_and_compile(config, num_classes, total_steps):
    model = kseg.models.get(config.model, num_classes, input_shape=(None, None, 3), **config.model_kwargs)
    loss = kseg.losses.get(config.loss)
    metric_classes = 2 if num_classes == 1 else num_classes
    model.compile(
        optimizer=_optimizer(config, total_steps),
        loss=loss,
        metrics=[kseg.metrics.SegmentationMetrics(metric_classes)],
    )
    # Optimizer variables made now, not inside the first traced step: TensorFlow would trace it twice.
    model.optimizer.build(model.trainable_variables)
    return model


def train(config, callbacks=()):
    """Trains `config.model` on `config.data`; returns a TrainResult. Resumes if `out_dir` holds a run."""
    best_path = os.path.join(config.out_dir, "best.keras")
    last_path = os.path.join(config.out_dir, "last.keras")
    finished = os.path.exists(last_path) and not os.path.isdir(os.path.join(config.out_dir, "backup"))
    if finished and not config.overwrite:
        raise KsegError(f"{config.out_dir} holds a finished run; choose another output folder or pass --overwrite")
    if finished:
        for name in ("best.keras", "last.keras", "log.csv"):
            if os.path.exists(os.path.join(config.out_dir, name)):
                os.remove(os.path.join(config.out_dir, name))
    os.makedirs(config.out_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(config.mixed_precision)

    train_split = kseg.data.load(config.data, "train", num_classes=config.num_classes, **config.data_options)
    val_split = kseg.data.load(
        config.val_data or config.data, "val", num_classes=config.num_classes, **config.data_options
    )
    num_classes = config.num_classes or train_split.num_classes
    train_batches = kseg.data.pipeline(
        train_split, config.batch_size, size=tuple(config.crop_size), training=True, seed=config.seed
    )
    val_batches = kseg.data.pipeline(val_split, config.batch_size)
    steps = config.steps_per_epoch or max(len(train_split) // config.batch_size, 1)
    if config.steps_per_epoch:
        train_batches = train_batches.repeat()

    with open(os.path.join(config.out_dir, "config.json"), "w") as f:
        json.dump({**dataclasses.asdict(config), "num_classes": num_classes,
                   "class_names": train_split.class_names}, f, indent=2)

    initial_epoch, best = _resume_state(config.out_dir)
    strategy = tf.distribute.MirroredStrategy() if config.distribute == "mirrored" else tf.distribute.get_strategy()
    with strategy.scope():
        model = build_and_compile(config, num_classes, steps * config.epochs)
        model.build((None, None, None, 3))
    if initial_epoch and config.verbose:
        print(f"kseg: resuming {config.out_dir} after epoch {initial_epoch} of {config.epochs}", flush=True)

    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")  # our datasets are shuffled
    history = model.fit(
        train_batches,
        validation_data=val_batches,
        epochs=config.epochs,
        steps_per_epoch=steps,
        callbacks=[  # the log row and best checkpoint first: once the backup says "done", they exist
            keras.callbacks.CSVLogger(os.path.join(config.out_dir, "log.csv"), append=True),
            AtomicBestCheckpoint(best_path, "val_miou", best),
            keras.callbacks.BackupAndRestore(os.path.join(config.out_dir, "backup"), double_checkpoint=True),
            keras.callbacks.TensorBoard(os.path.join(config.out_dir, "tensorboard"), write_graph=False),
            *callbacks,
        ],
        verbose=config.verbose,
    )
    save_atomic(model, last_path)
    if not os.path.exists(best_path):  # e.g. resumed after the last epoch: keep the contract
        save_atomic(model, best_path)
    return TrainResult(model, history.history, best_path, last_path, initial_epoch)
