"""Training with Keras `fit`: defaults chosen from the data, a length in steps, epochs or seconds, poly
learning-rate decay over that length, validation and checkpoints at a rate that costs a small share of the
run, the best checkpoint by validation mIoU, CSV and TensorBoard logs, and resumption after a kill.

    result = kseg.training.train(kseg.training.TrainConfig(data="my_folder", time_budget=120, out_dir="runs/a"))

Settings left at None are chosen by `kseg.training.recipe.choose` from the data, printed, and stored in the run's
`config.json` (which `kseg train --config` takes back, to repeat a run). Keras "epochs" here are rounds
of `val_every` steps: each round ends with a validation, a checkpoint and a backup, however few images
there are. Run the same config again with the same `out_dir` after an interruption and it resumes from
the last finished round (model, optimizer state, step and time spent included); the run's files are
`kseg.training.run_folder`'s, its pace `kseg.training.schedule`'s.

`distribute="multiworker"` trains on several machines (`kseg.training.distribute`): the batch size is then per
worker, a step takes batch_size x workers images, and the chief alone writes `out_dir`.
"""

import dataclasses
import math
import os
import tempfile
import time
import warnings
from collections.abc import Sequence

import keras
import tensorflow as tf

import kseg
from kseg import files, provenance
from kseg.data import Split
from kseg.errors import KsegError
from kseg.training import distribute, recipe, schedule
from kseg.training.config import AUGMENTATIONS, TrainConfig, TrainResult
from kseg.training.run_folder import RunFolder, is_disk_full


def train(config: TrainConfig, callbacks: Sequence[keras.callbacks.Callback] = (),
          started: float | None = None) -> TrainResult:
    """Trains `config.model` on `config.data`; returns a TrainResult. Resumes if `out_dir` holds a run.

    `started`: the `time.monotonic()` the time budget counts from (the command line passes its process's
    start); default now. The run folder is locked while it trains: a second `train` on the same `out_dir`
    raises a KsegError naming the process that holds it (a lock left by a killed process is taken over).
    With several workers only the chief locks and writes it.
    """
    started = time.monotonic() if started is None else started
    config.check()
    if config.distribute and keras.backend.backend() != "tensorflow":
        raise KsegError(distribute.unsupported_backend())
    # The multi-worker strategy must exist before TensorFlow runs anything (collectives are set up at startup).
    cluster = distribute.multiworker() if config.distribute == "multiworker" else None
    folder = RunFolder(config.out_dir, writes=cluster is None or cluster.is_chief)
    try:
        if not folder.writes:
            return _run(config, callbacks, started, folder, cluster)
        with files.FolderLock(config.out_dir, "kseg train"):
            return _run(config, callbacks, started, folder, cluster)
    except (tf.errors.UnavailableError, tf.errors.AbortedError) as error:
        if cluster is None:
            raise
        raise KsegError(distribute.lost_worker(error, config.out_dir)) from error
    except Exception as error:
        if is_disk_full(error):
            raise folder.disk_full(error) from error
        raise


def _run(config, callbacks, started, folder, cluster):
    workers = cluster.workers if cluster else 1
    finished = folder.holds_finished_run()
    if cluster:  # what the chief finds in its run folder decides for every worker
        finished = bool(cluster.broadcast([finished])[0])
    folder.start(config.overwrite, finished)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(config.mixed_precision)

    train_split = kseg.data.load(config.data, "train", num_classes=config.num_classes, format=config.data_format,
                                 **config.data_options)
    val_split = kseg.data.load(config.val_data or config.data, "val", num_classes=config.num_classes,
                               format=config.data_format, **config.data_options)
    num_classes = config.num_classes or train_split.num_classes
    state = folder.resume_state()
    if cluster:
        state = distribute.agree_on_resume(cluster, state)
    if state.rounds and config.val_every is None:
        config = dataclasses.replace(config, val_every=state.config.get("val_every"))
    config, choices = resolve(config, train_split, workers)

    # Cache decoded crops in memory when a streamed split fits in about 2 GiB (16 bytes a pixel, decoded).
    fits = not train_split.in_memory and len(train_split) * math.prod(config.crop_size) * 16 < 2**31
    augment = {**AUGMENTATIONS[config.augment], "oversample": config.oversample or 0.0,
               "oversample_classes": tuple(config.oversample_classes or ())}

    def batches(cache=fits):
        if cluster:
            return distribute.worker_batches(cluster, train_split, val_split, batch_size=config.batch_size,
                                             crop_size=config.crop_size, seed=config.seed, augment=augment,
                                             cache=cache)
        return (kseg.data.pipeline(train_split, config.batch_size, size=tuple(config.crop_size), training=True,
                                   seed=config.seed, repeat=True, cache=cache, **augment),
                kseg.data.pipeline(val_split, config.batch_size, cache=cache))

    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")  # our datasets are shuffled
    strategy = cluster.strategy if cluster else (
        tf.distribute.MirroredStrategy() if config.distribute == "mirrored" else tf.distribute.get_strategy())
    with strategy.scope():
        model = build_and_compile(config, num_classes)
        model.build((None, None, None, 3))
    # Printed once the model is built: a builder's argument error comes before any output.
    print(describe(config, choices, num_classes, train_split, val_split, cluster), flush=True)  # whatever verbosity
    if cluster:
        print(f"kseg: {cluster}; " + ("writing " + config.out_dir if folder.writes
                                      else "the chief writes the run folder"), flush=True)

    timing_steps, overhead_s, save_s = state.config.get("timing_steps", 0), 0.0, 0.0
    # A run of a few steps and no time budget is one round: timing it would train more steps than asked for.
    one_round = bool(config.steps) and config.steps <= 2 * (schedule.WARMUP_STEPS + 1) and not config.time_budget
    if one_round and config.val_every is None:
        config.val_every = config.steps
    if not one_round and (config.val_every is None or not state.rounds):
        # Timed on uncached copies: a partly read cache is thrown away (with a warning). Every worker takes
        # part (the steps are collective); the chief's timing sizes the rounds.
        step_s, overhead_s, save_s = schedule.measure(model, *batches(cache=False), val_count=len(val_split),
                                                      batch_size=config.batch_size * workers)
        timing_steps = schedule.WARMUP_STEPS + 1
        if config.val_every is None:
            seconds_left = config.time_budget and config.time_budget - (time.monotonic() - started)
            config.val_every = schedule.steps_per_round(step_s, overhead_s, config.steps, seconds_left)
            if cluster:
                config.val_every = int(cluster.broadcast([config.val_every])[0])
    folder.write_config({**dataclasses.asdict(config), "num_classes": num_classes,
                         "class_names": train_split.class_names,
                         "chosen": {name: choice.reason for name, choice in choices.items()},
                         "timing_steps": timing_steps})
    folder.checkpoint_sidecar = provenance.record(  # what made the checkpoints, should they leave the run folder
        config.model, config.model_kwargs, num_classes=num_classes, class_names=train_split.class_names,
        data=config.data, crop_size=list(config.crop_size))
    rounds = math.ceil(max(config.steps - timing_steps, 1) / config.val_every) if config.steps else 10**9
    steps_before = timing_steps + state.rounds * config.val_every
    if state.rounds:
        print(f"kseg: resuming {config.out_dir} after round {state.rounds} (step {steps_before}, "
              f"{state.seconds:.0f} s spent)", flush=True)
    print(f"kseg: validating and saving every {config.val_every} steps", flush=True)

    pace = schedule.Schedule(learning_rate=config.learning_rate, power=config.poly_power, started=started,
                             total_steps=config.steps, time_budget=config.time_budget, steps_before=steps_before,
                             seconds_before=state.seconds, reserve=overhead_s + save_s, final_save=save_s,
                             agree=cluster.broadcast if cluster else None)
    # Step and time into the logs first. Only the chief writes; callbacks that take part in collectives
    # (Schedule, SyncFromChief) run on every worker.
    run_callbacks = [pace, *folder.callbacks(state.best)]
    if cluster and state.rounds:
        run_callbacks.append(distribute.SyncFromChief(cluster))  # after the chief's BackupAndRestore
    train_batches, val_batches = batches()
    history = model.fit(train_batches, validation_data=val_batches, epochs=rounds, initial_epoch=state.rounds,
                        steps_per_epoch=config.val_every, callbacks=[*run_callbacks, *callbacks],
                        verbose=config.verbose if folder.writes else 0).history
    summary = _summary(config, pace, history, started, workers)
    result = TrainResult(model, history, folder.best, folder.last, state.rounds, summary)
    if not folder.writes:  # its final weights, in a temporary folder: the run folder is the chief's
        result.worker_weights = os.path.join(tempfile.mkdtemp(prefix=f"kseg-worker{cluster.index}-"),
                                             "last.weights.h5")
        model.save_weights(result.worker_weights)
        print(f"kseg: {cluster} trained {summary['steps']} steps; its final weights: {result.worker_weights}",
              flush=True)
        return result
    folder.finish(model, summary)
    print(f"kseg: trained {summary['steps']} steps in {summary['seconds']:.0f} s "
          f"({summary['images_per_second']:.1f} images/s); validation and checkpoints took "
          f"{100 * summary['overhead_share']:.1f}% of the run; best val mIoU {100 * summary['best_val_miou']:.2f}",
          flush=True)
    return result


def _optimizer(config):
    if config.optimizer == "adam":
        return keras.optimizers.Adam(config.learning_rate)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay or 1e-4)
    return keras.optimizers.SGD(config.learning_rate, momentum=0.9, weight_decay=config.weight_decay or None)


def build_and_compile(config: TrainConfig, num_classes: int) -> keras.Model:
    """The configured model, compiled with its loss, kseg's metrics and its optimizer (built now)."""
    if config.init:  # those weights, rebuilt for any size; new classifiers where the class count differs
        loaded = kseg.models.pretrained.load(config.init, num_classes=num_classes, input_shape=(None, None, 3))
        model = loaded.model
        print(f"kseg: starting from {config.init}" + (f" (new for {num_classes} classes: "
              f"{', '.join(loaded.reinitialised)})" if loaded.reinitialised else ""), flush=True)
    else:
        # ImageNet weights are a starting point, not a builder argument: config.json and sidecars never name the file.
        weights = recipe.imagenet_weights(config)
        kwargs: dict = {**(config.model_kwargs or {}), **({"backbone_weights": weights} if weights else {})}
        model = kseg.models.get(config.model, num_classes, input_shape=(None, None, 3), **kwargs)
        if weights and config.backbone_bn == "frozen":
            _freeze_backbone_batch_norm(model, config)
    model.compile(optimizer=_optimizer(config), loss=kseg.losses.get(config.loss),
                  metrics=[kseg.metrics.SegmentationMetrics(2 if num_classes == 1 else num_classes)])
    # Optimizer variables made now, not inside the first traced step: TensorFlow would trace it twice.
    model.optimizer.build(model.trainable_variables)
    return model


def _freeze_backbone_batch_norm(model, config):
    """The ImageNet backbone's batch norm in inference mode with its ImageNet statistics (trainable=False does
    both in Keras 3); the decoder's, freshly initialised, keeps learning."""
    backbone = recipe.backbone_of(config.model, config.model_kwargs or {})
    assert backbone is not None  # recipe.imagenet_weights found a file for it
    names = kseg.models.backbones.layer_names(backbone[0], **backbone[1])
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.name in names:
            layer.trainable = False


def resolve(config: TrainConfig, train_split: Split, workers: int = 1) -> tuple[TrainConfig, dict]:
    """(config with every unset field chosen, {field: Choice}): the settings a run will use.

    `workers`: machines sharing each step (multi-worker), each taking `batch_size` images of it.
    """
    config.check()
    if config.init:  # the starting weights' architecture and builder arguments
        config = dataclasses.replace(config, **kseg.models.pretrained.init_settings(
            config.init, config.model, config.model_kwargs))
    choices = recipe.choose(config, train_split)
    resolved = dataclasses.replace(config, **{name: choice.value for name, choice in choices.items()})
    resolved.check()
    assert resolved.batch_size is not None and resolved.crop_size is not None  # recipe.choose fills every default
    if resolved.steps is None and resolved.epochs is not None:
        per_epoch = resolved.steps_per_epoch or max(len(train_split) // (resolved.batch_size * workers), 1)
        resolved.steps = math.ceil(resolved.epochs * per_epoch)
        if resolved.steps_per_epoch and resolved.val_every is None:
            resolved.val_every = resolved.steps_per_epoch
    return resolved, choices


def describe(config: TrainConfig, choices: dict, num_classes: int, train_split, val_split, cluster=None) -> str:
    """The settings a run uses, one a line, the chosen ones marked with their reasons."""
    length = [f"{config.steps} steps"] if config.steps else []
    if config.time_budget:
        length.append(f"{config.time_budget:g} s")
    kwargs = ", ".join(f"{k}={v}" for k, v in (config.model_kwargs or {}).items())
    names = [train_split.class_names[c] if c < len(train_split.class_names) else str(c)
             for c in config.oversample_classes or ()]
    rows = [
        ("data", f"{train_split.description}: {len(train_split)} training, {len(val_split)} validation images, "
                 f"{num_classes} classes"),
        ("model", f"{config.model}({kwargs})" if kwargs else config.model, "model", "model_kwargs"),
        ("crop", "x".join(map(str, config.crop_size or ())), "crop_size"),
        ("batch", f"{config.batch_size} per worker x {cluster.workers} workers" if cluster else str(config.batch_size),
         "batch_size"),
        ("length", " or ".join(length) + " (whichever comes first)" * (len(length) > 1), "steps"),
        ("optimizer", f"{config.optimizer}, learning rate {config.learning_rate:g}, poly {config.poly_power} to 0",
         "learning_rate"),
        ("start", _start(config), "pretrained", "backbone_bn"),
        ("loss", config.loss, "loss"),
        ("crops", f"{100 * config.oversample:.0f}% centred on class {', '.join(names)}" if config.oversample and names
         else "uniform", "oversample"),
        ("augment", config.augment, "augment"),
    ]
    lines = ["kseg train: settings (chosen ones marked *, each can be set; stored in config.json)"]
    for label, value, *fields in rows:
        reason = "; ".join(choices[f].reason for f in fields if f in choices and choices[f].reason)
        lines.append(f"  {'*' if reason else ' '} {label:10s} {value}" + (f"  ({reason})" if reason else ""))
    return "\n".join(lines)


def _start(config):
    """Where the weights start, in a few words."""
    if config.init:
        return config.init
    weights = recipe.imagenet_weights(config)
    if weights is None:
        return "from scratch"
    frozen = ", backbone batch norm frozen" if config.backbone_bn == "frozen" else ""
    return f"ImageNet ({os.path.basename(weights)}){frozen}"


def _summary(config, pace, history, started, workers=1):
    """This session's numbers: steps, seconds, training speed (images/s over all workers) and the share
    validation and saving took."""
    seconds = time.monotonic() - started
    miou = [m for m in history.get("val_miou", []) if m is not None]
    return {
        "steps": pace.step,
        "seconds": pace.seconds_before + seconds,
        "session_seconds": seconds,
        "images_per_second": (pace.step - pace.first_step) * config.batch_size * workers
        / max(seconds - pace.overhead, 1e-9),
        "overhead_seconds": pace.overhead,
        "overhead_share": pace.overhead / max(seconds, 1e-9),
        "rounds": pace.rounds,
        "best_val_miou": max(miou) if miou else float("nan"),
        "stopped_by": pace.stopped_by,
        "workers": workers,
    }
