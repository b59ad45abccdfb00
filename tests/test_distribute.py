"""Training on several machines (`kseg train --distribute multiworker`), as two worker processes on this one:
one set of checkpoints, written by the chief only; the same weights on both workers; a loss like one
worker's with the same global batch; a killed run that resumes from the chief's backup."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import requires_tensorflow

import kseg
from kseg.cli import main
from kseg.errors import KsegError
from kseg.training import distribute

pytestmark = requires_tensorflow
TINY = ["--model", "unet", "--model-arg", "filters=4", "--model-arg", "depth=2", "--crop-size", "32",
        "--batch-size", "4", "--seed", "1", "--verbose", "0"]
LIMIT = 300  # seconds a worker may run before `timeout` ends it (a lone worker waits for its peers forever)
LOSS_GAP = 0.15  # relative gap of a round's mean loss between two workers and one with the same global batch


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert main(["data", "synth", str(root), "--num-images", "16", "--size", "32"]) == 0
    return root


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def launch(args, logs, workers=2):
    """`kseg train --distribute multiworker ARGS` as `workers` processes on this machine; worker 0 is the chief.

    Each runs under `timeout` in its own process group (`kill` ends the worker with its `timeout`)."""
    addresses = [f"localhost:{port}" for port in free_ports(workers)]
    processes = []
    for index in range(workers):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3",
               "CUDA_VISIBLE_DEVICES": "-1", "TF_NUM_INTRAOP_THREADS": "1"}  # two processes on two cores
        with open(logs / f"worker{index}.log", "w") as log:
            processes.append(subprocess.Popen(
                ["timeout", "-s", "KILL", str(LIMIT), sys.executable, "-m", "kseg.cli", "train", "--distribute",
                 "multiworker", *args], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
    return processes


def kill(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def finish(processes, logs):
    """Each worker's (return code, console), once all have ended."""
    try:
        codes = [process.wait(timeout=LIMIT + 30) for process in processes]
    finally:
        for process in processes:
            kill(process)
    return [(code, (logs / f"worker{i}.log").read_text()) for i, code in enumerate(codes)]


def log_rows(out):
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def weights(path):
    """Trainable weights of the tiny U-Net from a .keras or .weights.h5 file (batch-norm moving statistics
    are left out: every worker keeps its own, as tf.distribute does)."""
    import warnings

    import keras

    model = kseg.models.get("unet", 6, input_shape=(None, None, 3), filters=4, depth=2)  # registers kseg's layers
    if path.endswith(".keras"):
        model = keras.saving.load_model(path, compile=False)
    else:
        with warnings.catch_warnings():  # the file also holds the optimizer's state, which this model lacks
            warnings.simplefilter("ignore")
            model.load_weights(path)
    return [np.asarray(w) for w in model.trainable_weights]


@pytest.mark.slow
def test_two_workers_train_as_one_with_their_global_batch(data, tmp_path):
    out = tmp_path / "two"
    # 5 timed warm-up steps, then 3 rounds of 8 steps, each worker taking 4 images of every step's 8
    workers = finish(launch([*TINY, "--data", str(data), "--steps", "29", "--val-every", "8", "--out", str(out)],
                            tmp_path), tmp_path)
    for code, console in workers:
        assert code == 0, console[-3000:]
    chief, other = workers[0][1], workers[1][1]
    assert "worker 0 of 2 (chief)" in chief and "4 per worker x 2 workers" in chief

    # One run folder, the chief's; the other worker wrote only its final weights, to a temporary folder.
    single = tmp_path / "one"
    result = subprocess.run([sys.executable, "-m", "kseg.cli", "train", *TINY, "--batch-size", "8", "--data",
                             str(data), "--steps", "29", "--val-every", "8", "--out", str(single)],
                            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            timeout=LIMIT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == sorted(os.listdir(single))  # best/last.keras (+ .json), log, config...
    summary = json.loads((out / "summary.json").read_text())
    assert summary["workers"] == 2 and summary["steps"] == 29 and summary["rounds"] == 3
    assert json.loads((out / "config.json").read_text())["distribute"] == "multiworker"
    path = other.split("its final weights: ")[1].split()[0]
    assert not path.startswith(str(out))
    for mine, theirs in zip(weights(str(out / "last.keras")), weights(path), strict=True):
        np.testing.assert_array_equal(mine, theirs)  # gradients summed by all-reduce: the same updates
    shutil.rmtree(os.path.dirname(path))

    # Learning like one worker's with the same global batch of 8 (other images a step: each worker its shard).
    # Compared on the round logs: the confusion-matrix metrics, which tf.distribute sums over the workers (seen
    # within 0.005 of one worker's), and the loss (each replica's share, summed: like one worker's).
    two, one = log_rows(out), log_rows(single)
    assert [int(float(row["step"])) for row in two] == [int(float(row["step"])) for row in one] == [13, 21, 29]
    for mine, theirs in zip(two, one, strict=True):
        for key in ("loss", "val_loss"):
            assert abs(float(mine[key]) / float(theirs[key]) - 1) < LOSS_GAP, (key, two, one)
        assert abs(float(mine["pixel_accuracy"]) - float(theirs["pixel_accuracy"])) < 0.03, (two, one)
        assert abs(float(mine["miou"]) - float(theirs["miou"])) < 0.02, (two, one)
        assert abs(float(mine["val_miou"]) - float(theirs["val_miou"])) < 0.02, (two, one)
    assert float(two[-1]["loss"]) < float(two[0]["loss"])


@pytest.mark.slow
def test_a_killed_worker_run_resumes_from_the_chief_backup(data, tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--data", str(data), "--steps", "85", "--val-every", "8", "--out", str(out)]  # 5 + 10 rounds
    processes = launch(args, tmp_path)
    metadata = out / "backup" / "training_metadata.json"
    try:
        deadline = time.time() + LIMIT
        while time.time() < deadline and finished_rounds(metadata) < 2 and processes[0].poll() is None:
            time.sleep(0.1)
        kill(processes[1])  # the other worker dies: the chief notices (heartbeats) and stops with one line
        assert processes[0].wait(timeout=120) == 2
    finally:
        for process in processes:
            kill(process)
    console = (tmp_path / "worker0.log").read_text()
    assert "start every worker again with the same command" in console.strip().splitlines()[-1], console[-3000:]
    finished = finished_rounds(metadata)
    assert 2 <= finished < 10

    workers = finish(launch(args, tmp_path), tmp_path)  # both again, on new ports
    for code, console in workers:
        assert code == 0, console[-3000:]
    assert f"resuming {out} after round {finished} (step {5 + 8 * finished}," in workers[0][1]
    assert f"resuming {out} after round {finished}" in workers[1][1]  # the chief's backup, on the chief's disk
    rows = log_rows(out)
    assert [int(row["epoch"]) for row in rows] == list(range(10))  # no round missing or repeated
    assert [int(float(row["step"])) for row in rows] == [5 + 8 * (i + 1) for i in range(10)]
    assert not os.path.exists(out / "backup")
    path = workers[1][1].split("its final weights: ")[1].split()[0]
    for mine, theirs in zip(weights(str(out / "last.keras")), weights(path), strict=True):
        np.testing.assert_array_equal(mine, theirs)  # the other worker took the chief's restored state
    shutil.rmtree(os.path.dirname(path))


def finished_rounds(metadata):
    try:
        return json.loads(metadata.read_text())["epoch"]
    except (OSError, ValueError, KeyError):  # not written yet, or caught mid-write
        return 0


def test_validation_is_padded_to_whole_global_batches():
    split = kseg.data.load("synthetic", "val", num_images=20, size=(32, 32))  # 5 images
    padded = distribute.pad(split, 4)
    examples = list(padded.examples.as_numpy_iterator())
    assert len(padded) == len(examples) == 8
    assert all(mask.shape == (32, 32) and (mask == kseg.IGNORE_LABEL).all() for _, mask in examples[5:])
    assert distribute.pad(padded, 4) is padded


def test_each_worker_reads_its_own_share():
    split = kseg.data.load("synthetic", "train", num_images=10, size=(32, 32))
    shares = [distribute.shard(split, 3, index) for index in range(3)]
    assert [len(share) for share in shares] == [4, 3, 3]
    masks = [{mask.tobytes() for _, mask in share.examples.as_numpy_iterator()} for share in shares]
    assert sum(map(len, masks)) == 10 and not (masks[0] & masks[1] or masks[1] & masks[2] or masks[0] & masks[2])
    with pytest.raises(KsegError, match="2 training images for 3 workers"):
        distribute.shard(kseg.data.load("synthetic", "train", num_images=2, size=(32, 32)), 3, 0)


@pytest.mark.parametrize("tf_config, message", [
    (None, "needs TF_CONFIG"),
    ("{not json", "not a tf.distribute cluster description"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "task index 1 is not in"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}', "'chief' and"),
])
def test_a_bad_tf_config_is_named(tf_config, message):
    with pytest.raises(KsegError, match=message):
        distribute.check_tf_config(tf_config)


@pytest.mark.slow
def test_the_command_line_names_what_is_missing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "kseg.cli", "train", "--distribute", "multiworker", "--out",
                             str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("kseg: error: --distribute multiworker needs TF_CONFIG")
    assert not os.path.exists(tmp_path / "o")

    result = subprocess.run([sys.executable, "-m", "kseg.cli", "train", "--distribute", "mirrored", "--out",
                             str(tmp_path / "o")], capture_output=True, text=True,
                            env={**env, "KERAS_BACKEND": "jax"}, timeout=120)
    assert result.returncode == 2 and "KERAS_BACKEND=tensorflow" in result.stderr.strip().splitlines()[-1]
