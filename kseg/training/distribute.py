"""Training on several machines: `kseg train --distribute multiworker` (tf.distribute.MultiWorkerMirroredStrategy).

Every machine runs the same command with its own TF_CONFIG, the standard tf.distribute cluster description:

    TF_CONFIG='{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", "index": 0}}'

Worker 0 (or the task of type "chief") is the chief: it alone writes the run folder (checkpoints, logs,
config.json, summary, the backup a killed run resumes from) and decides what every worker must do alike
(round length, when a time budget is spent, the state a resumed run starts from): `Cluster.broadcast` sends
its values to the others. Every worker reads its own share of the training images (`shard`); validation
batches are split evenly across workers (`pad`).

Keras 3.15 cannot run `fit` under this strategy with two workers or more (keras-team/keras#20585, open):
`patch_keras` fixes the two faults behind it, for the Keras versions known to have them, and only when a
multi-worker strategy is made.
"""

import dataclasses
import json
import math
import os
import re

import keras
import tensorflow as tf

from kseg import IGNORE_LABEL
from kseg.errors import KsegError

# Keras versions (major, minor) whose TensorFlow trainer has the two multi-worker faults `patch_keras` fixes:
# 3.15 installed here, and master (3.16.dev) as read on 2026-11-26.
PATCHED_KERAS = ((3, 0), (3, 16))
WORKER_SEED_STRIDE = 1_000_003  # worker i shuffles and augments its images with seed + i * this


class Cluster:
    """This process's place in a multi-worker run, and agreement between the workers.

    `index` 0 is the chief. `broadcast` is a collective: every worker must call it, in the same order.
    """

    def __init__(self, strategy):
        self.strategy = strategy
        resolver = strategy.cluster_resolver
        jobs = resolver.cluster_spec().as_dict()
        chiefs = len(jobs.get("chief", []))
        self.workers = chiefs + len(jobs.get("worker", []))
        self.index = 0 if resolver.task_type == "chief" else chiefs + int(resolver.task_id or 0)
        self.is_chief = bool(strategy.extended.should_checkpoint)
        self._from_chief = tf.function(self._first_replica_values)

    def __str__(self):
        return f"worker {self.index} of {self.workers}" + (" (chief)" if self.is_chief else "")

    def broadcast(self, values):
        """The chief's `values` (a list of numbers) on every worker, as floats."""
        tensors = [tf.constant(float(value), tf.float64) for value in values]
        return [float(value) for value in self._from_chief(tensors)]

    def sync_variables(self, variables):
        """Gives every worker the chief's values of `variables` (Keras variables), in one collective."""
        variables = list(variables)
        values = self._from_chief([tf.cast(v.value, tf.float64) for v in variables])
        for variable, value in zip(variables, values):
            variable.assign(tf.cast(value, variable.dtype))

    def _first_replica_values(self, values):
        # A sum in which only global replica 0 (the chief's first device) contributes: its values, everywhere.
        def replica(values):
            context = tf.distribute.get_replica_context()
            keep = tf.cast(tf.equal(context.replica_id_in_sync_group, 0), tf.float64)
            return context.all_reduce(tf.distribute.ReduceOp.SUM, [value * keep for value in values])

        result = self.strategy.run(replica, args=(values,))
        return [self.strategy.experimental_local_results(value)[0] for value in result]


def shard(split, workers, index):
    """Worker `index`'s share of a training split: every `workers`-th example from the `index`-th, taken before
    any decoding is cached or augmentation paid for."""
    if split.length is not None and split.length < workers:
        raise KsegError(f"{split.description}: {split.length} training images for {workers} workers; "
                        f"every worker needs at least one")
    length = None if split.length is None else len(range(index, split.length, workers))
    return dataclasses.replace(split, examples=split.examples.shard(workers, index), length=length)


def pad(split, multiple):
    """`split` with blank, wholly ignored examples appended up to a multiple of `multiple` (the global batch):
    every worker then validates the same number of full batches (one without a batch would wait for the
    others), and the blanks count in no metric (their labels are all IGNORE_LABEL)."""
    if split.length is None:
        raise KsegError(f"{split.description}: validation under --distribute multiworker needs a split of "
                        f"known length")
    extra = -split.length % multiple
    if not extra:
        return split
    image_spec, _ = split.examples.element_spec
    shape = tuple(image_spec.shape[:2]) if image_spec.shape[:2].is_fully_defined() else split.image_size or (1, 1)
    blank = (tf.zeros((*shape, 3), image_spec.dtype), tf.fill(shape, tf.constant(IGNORE_LABEL, tf.uint8)))
    examples = split.examples.concatenate(tf.data.Dataset.from_tensors(blank).repeat(extra))
    return dataclasses.replace(split, examples=examples, length=split.length + extra)


def with_sharding(dataset, policy):
    """`dataset` with the auto-shard policy tf.distribute applies to it ("OFF" or "DATA")."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = getattr(tf.data.experimental.AutoShardPolicy, policy)
    return dataset.with_options(options)


def multiworker():
    """The Cluster for TF_CONFIG's cluster. Make it before TensorFlow runs anything (data, models, seeds)."""
    if keras.backend.backend() != "tensorflow":
        raise KsegError(unsupported_backend())
    check_tf_config(os.environ.get("TF_CONFIG"))
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        if "program startup" in str(error):
            raise KsegError("--distribute multiworker must be set up before TensorFlow runs anything in this "
                            "process: start kseg train in a fresh process") from None
        raise
    patch_keras()
    return Cluster(strategy)


def unsupported_backend():
    return (f"--distribute needs the TensorFlow backend (tf.distribute); this is Keras with "
            f"{keras.backend.backend()}: run with KERAS_BACKEND=tensorflow")


def check_tf_config(text):
    """Raises a KsegError naming what is wrong with TF_CONFIG for a multi-worker run."""
    if not text:
        raise KsegError("--distribute multiworker needs TF_CONFIG, e.g. '{\"cluster\": {\"worker\": [\"host0:2222\", "
                        "\"host1:2222\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}' (index 1 on the second "
                        "machine); on one machine use --distribute mirrored")
    try:
        config = json.loads(text)
        jobs, task = config["cluster"], config["task"]
        kind, index = task["type"], int(task["index"])
        addresses = jobs[kind]
    except (ValueError, KeyError, TypeError):
        raise KsegError(f"TF_CONFIG is not a tf.distribute cluster description: {text[:200]}") from None
    if kind not in ("chief", "worker") or set(jobs) - {"chief", "worker"}:
        raise KsegError(f"TF_CONFIG: --distribute multiworker takes tasks of type 'chief' and 'worker' only, "
                        f"got {sorted({kind, *jobs})}")
    if not 0 <= index < len(addresses):
        raise KsegError(f"TF_CONFIG: task index {index} is not in the cluster's {len(addresses)} {kind} address(es)")


class SyncFromChief(keras.callbacks.Callback):
    """At the start of a resumed `fit`, after the chief restored its backup: every worker takes the chief's
    weights, optimizer state and first round, so a resumed run needs the backup on the chief's disk only."""

    def __init__(self, cluster):
        super().__init__()
        self.cluster = cluster

    def on_train_begin(self, logs=None):
        self.cluster.sync_variables([*self.model.weights, *self.model.optimizer.variables])
        # The round `fit` starts from: BackupAndRestore sets it on the chief (an older one if the latest
        # backup did not load); `fit` reads it after on_train_begin.
        first = int(self.cluster.broadcast([getattr(self.model, "_initial_epoch", None) or 0])[0])
        self.model._initial_epoch = first or None


def patch_keras():
    """Fixes Keras's TensorFlow trainer for MultiWorkerMirroredStrategy with two workers or more.

    Upstream: keras-team/keras#20585 (the TensorFlow tutorial's multi-worker `fit` fails since Keras 3).
    1. `_maybe_symbolic_build` reduces the first batch, a (x, y) tuple of per-replica values, with
       `strategy.reduce`; the multi-worker strategy reduces one tensor only and raises "Attempt to convert
       a value (PerReplica...)". Only shapes and dtypes are needed: the dataset's element spec gives them
       without reading a batch (a batch read there, in a throwaway iterator, also made runs unrepeatable:
       its prefetching advanced the shuffle's seeds by as many passes as it had time for).
    2. `reduce_per_replica` reduces every step's metric values (scalars) with `strategy.reduce(..., axis=0)`:
       "axis 0 out of range". The step values become this worker's own (its progress bar); the logs of a
       round - what callbacks, log.csv and checkpoints see - are read from the metric variables, which
       tf.distribute sums over all workers, so they are exact.
    Applied once, to the Keras versions in PATCHED_KERAS; others run as they are, with a warning.
    """
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_kseg_multiworker_patch", False):
        return
    version = tuple(int(part) for part in keras.__version__.split(".")[:2])
    if not PATCHED_KERAS[0] <= version <= PATCHED_KERAS[1]:
        low, high = (".".join(map(str, v)) for v in PATCHED_KERAS)
        print(f"kseg: warning: kseg patches Keras {low} to {high} for multi-worker training "
              f"(keras-team/keras#20585); Keras {keras.__version__} runs as it is",
              flush=True)
        return
    multi_worker = trainer._collective_all_reduce_multi_worker
    reduce_per_replica = trainer.reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        strategy = self.distribute_strategy
        if iterator is not None:
            dataset = iterator.data_adapter.get_tf_dataset()
            if isinstance(dataset, tf.data.Dataset):
                data_batch = dataset.element_spec
            else:  # already distributed: the first replica's part of a batch
                for _, _, batches in iterator:
                    data_batch = tf.nest.map_structure(lambda value: _first_local(strategy, value), next(batches))
                    break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica_multi_worker(values, strategy, reduction):
        if reduction in ("auto", "mean") and multi_worker(strategy):
            return tf.nest.map_structure(lambda value: _first_local(strategy, value), values)
        return reduce_per_replica(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica_multi_worker  # a module global, looked up when a step traces
    trainer._kseg_multiworker_patch = True


def _first_local(strategy, value):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def lost_worker(error, out_dir):
    """The one line for a run whose workers lost one of theirs (killed, crashed, unreachable)."""
    named = sorted(set(re.findall(r"/job:\w+/(?:replica:\d+/)?task:\d+", str(error).partition("unhealthy")[2])))
    who = ", ".join(named) or "another worker"
    return (f"{who} stopped or cannot be reached ({type(error).__name__}); start every worker again with the same "
            f"command: the run resumes from the chief's backup in {out_dir}")


def worker_batches(cluster, train_split, val_split, *, batch_size, crop_size, seed, augment, cache):
    """(training, validation) datasets of this worker. Each worker reads its own share of the images, in global
    batches that tf.distribute splits into per-worker ones (sharding "OFF": already done). Validation batches
    are split between the workers ("DATA"): as many steps as with the global batch, each as small as that
    allows, so that the few blank examples that make every worker's part whole (`pad`) are as few as possible."""
    import kseg.data

    global_batch = batch_size * cluster.workers
    own = shard(train_split, cluster.workers, cluster.index)
    train = kseg.data.pipeline(own, global_batch, size=tuple(crop_size), training=True,
                               seed=seed + WORKER_SEED_STRIDE * cluster.index, repeat=True, cache=cache, **augment)
    val_steps = math.ceil(len(val_split) / global_batch)
    val_batch = cluster.workers * math.ceil(len(val_split) / (cluster.workers * val_steps))
    val = kseg.data.pipeline(pad(val_split, val_batch), val_batch, cache=cache)
    return with_sharding(train, "OFF"), with_sharding(val, "DATA")


def agree_on_resume(cluster, state):
    """The chief's resume state (rounds done, seconds spent, round length, timed steps) on every worker: the
    others resume from it (`SyncFromChief` gives them its weights)."""
    rounds, seconds, val_every, timing_steps = cluster.broadcast(
        [state.rounds, state.seconds, state.config.get("val_every") or 0, state.config.get("timing_steps", 0)])
    config = {"val_every": int(val_every) or None, "timing_steps": int(timing_steps)} if rounds else {}
    return dataclasses.replace(state, rounds=int(rounds), seconds=seconds, config=config)
