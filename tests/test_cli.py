"""The `kseg` command line as a user runs it: train, resume after a kill, evaluate, export, predict, bench."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import requires_tensorflow

from kseg.cli import main
from kseg.errors import KsegError
from kseg.files import FolderLock

pytestmark = requires_tensorflow
TINY = ["--model", "unet", "--model-arg", "filters=4", "--model-arg", "depth=2", "--crop-size", "32",
        "--batch-size", "4"]


def kseg(*args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "kseg.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert main(["data", "synth", str(root), "--num-images", "16", "--size", "32"]) == 0
    return root


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    # 5 timed steps, then 2 rounds of 4 steps, each ending with a validation and a log row
    assert main(["train", *TINY, "--data", str(data), "--steps", "13", "--val-every", "4", "--out", str(out),
                 "--seed", "1"]) == 0
    return out


def test_help_lists_every_command():
    result = kseg("--help")
    assert result.returncode == 0
    for command in ("demo", "train", "evaluate", "predict", "export", "quantize-study", "bench", "data", "models"):
        assert f"    {command}" in result.stdout


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "deeplabv3plus" in out and "unet" in out and "mobilenetv2" in out


def test_train_writes_checkpoints_and_logs(run_dir):
    for name in ("best.keras", "last.keras", "log.csv", "config.json", "tensorboard"):
        assert os.path.exists(run_dir / name), name
    rows = (run_dir / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch") and "val_miou" in rows[0] and len(rows) == 3
    assert not os.path.exists(run_dir / "backup")  # removed once training finished
    sidecar = json.loads((run_dir / "best.keras.json").read_text())  # provenance travels with the checkpoint
    assert sidecar["architecture"] == "unet" and sidecar["builder_args"] == {"filters": 4, "depth": 2}
    assert sidecar["num_classes"] == 6 and sidecar["crop_size"] == [32, 32] and sidecar["kseg_version"]


@pytest.mark.slow
def test_a_run_folder_in_use_is_refused_and_a_dead_holder_is_taken_over(data, tmp_path):
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import time; from kseg.files import FolderLock; "
                               f"lock = FolderLock({str(out)!r}).acquire(); print('locked', flush=True); "
                               "time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = kseg("train", *TINY, "--data", str(data), "--steps", "7", "--out", str(out))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"is in use by process {holder.pid} on " in result.stderr.strip().splitlines()[-1]
        assert not os.path.exists(out / "config.json")  # nothing written by the refused run
    finally:
        holder.kill()
        holder.wait()
    # The killed holder's lock went with its process; and a lock is exclusive within one process too.
    with FolderLock(str(out)), pytest.raises(KsegError, match="is in use by process"):
        FolderLock(str(out)).acquire()


def test_a_finished_run_is_not_overwritten_silently(run_dir, data, capsys):
    before = (run_dir / "log.csv").read_text()
    assert main(["train", *TINY, "--data", str(data), "--epochs", "2", "--out", str(run_dir)]) == 2
    assert "holds a finished run" in capsys.readouterr().err
    assert (run_dir / "log.csv").read_text() == before


def test_evaluate_keras_and_litert_with_json(run_dir, data, tmp_path, capsys):
    assert main(["export", str(run_dir / "best.keras"), "--out", str(tmp_path), "--input-size", "32",
                 "--modes", "float32", "int8", "--calibration-data", str(data), "--savedmodel"]) == 0
    assert os.path.isdir(tmp_path / "best_savedmodel")
    scores = {}
    for artifact in ("best.keras", "best_float32.tflite", "best_int8.tflite"):
        path = run_dir / artifact if artifact.endswith(".keras") else tmp_path / artifact
        report = tmp_path / f"{artifact}.json"
        assert main(["evaluate", str(path), "--data", str(data), "--json", str(report),
                     "--confusion", str(tmp_path / "confusion.png")]) == 0
        result = json.loads(report.read_text())
        scores[artifact] = result["scores"]["miou"]
        assert len(result["confusion"]) == 6 and 0 <= scores[artifact] <= 1
    assert "| background |" in capsys.readouterr().out
    assert abs(scores["best.keras"] - scores["best_float32.tflite"]) < 1e-3
    assert os.path.getsize(tmp_path / "confusion.png") > 1000


def test_predict_writes_palette_labels_and_overlays(run_dir, data, tmp_path):
    from PIL import Image

    images = sorted((data / "val" / "images").iterdir())[:2]
    assert main(["predict", str(run_dir / "best.keras"), *map(str, images), "--out", str(tmp_path)]) == 0
    label = Image.open(tmp_path / f"{images[0].stem}.png")
    assert label.mode == "P" and label.size == (32, 32)
    assert os.path.exists(tmp_path / f"{images[1].stem}_overlay.jpg")


def test_bench_prints_and_saves(run_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", str(run_dir / "best.keras"), "--runs", "3", "--input-size", "32",
                 "--json", str(out)]) == 0
    assert "mean" in capsys.readouterr().out and json.loads(out.read_text())[0]["runs"] == 3


def test_data_check_reports_problems_and_exit_code(data, tmp_path, capsys):
    assert main(["data", "check", str(data / "train")]) == 0
    assert "16 image/mask pairs, 6 classes" in capsys.readouterr().out
    bad = tmp_path / "bad"
    main(["data", "synth", str(bad), "--num-images", "4", "--size", "32"])
    os.remove(next((bad / "train" / "masks").iterdir()))
    assert main(["data", "check", str(bad / "train")]) == 1
    assert "no mask (expected" in capsys.readouterr().out


@pytest.mark.slow
def test_bad_input_is_one_line_without_a_trace(tmp_path):
    result = kseg("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("kseg: error:")
    assert "Traceback" not in result.stderr
    result = kseg("evaluate", str(tmp_path / "none.keras"))
    assert result.returncode == 2 and "none.keras: no such file" in result.stderr


def finished_epochs(metadata):
    try:
        return json.loads(metadata.read_text())["epoch"]
    except (OSError, ValueError, KeyError):  # not written yet, or caught mid-write
        return 0


@pytest.mark.slow
def test_training_resumes_after_a_kill(data, tmp_path):
    out = tmp_path / "resume"
    args = [sys.executable, "-m", "kseg.cli", "train", *TINY, "--data", str(data), "--epochs", "40",
            "--val-every", "4", "--out", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    metadata = out / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    while time.time() < deadline and finished_epochs(metadata) < 2:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = json.loads(metadata.read_text())["epoch"]  # epochs finished before the kill
    assert 2 <= finished < 40

    result = kseg("train", *TINY, "--data", str(data), "--epochs", "40", "--val-every", "4", "--out", str(out),
                  timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not FRAMEWORK_LOG.search(result.stderr), result.stderr[-2000:]  # a clean console
    assert f"resuming {out} after round {finished} (step {5 + 4 * finished}," in result.stdout
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in rows] == list(range(39))  # no round missing or repeated in the log
    steps = [int(float(row["step"])) for row in rows]
    assert steps == [5 + 4 * (i + 1) for i in range(38)] + [160]  # 5 timed steps, rounds of 4, 40 epochs in all
    seconds = [float(row["seconds"]) for row in rows]
    assert seconds == sorted(seconds)  # time spent before the kill carries over


@pytest.mark.slow
def test_the_time_budget_holds_for_the_whole_process(data, tmp_path):
    """Wall clock of the command, framework start-up, data loading and the final saves included."""
    budget = 30.0
    started = time.monotonic()
    result = kseg("train", "--model", "unet", "--model-arg", "filters=4", "--model-arg", "depth=2", "--data",
                  str(data), "--time-budget", str(budget), "--out", str(tmp_path / "run"), "--verbose", "0")
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    assert seconds <= 1.1 * budget, f"{seconds:.1f} s for a {budget:g} s budget"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stopped_by"] == "time budget"


@pytest.mark.slow
def test_demo_quick_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    result = kseg("demo", "--quick", "--out", str(out), timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    for stage in range(1, 7):
        assert f"[{stage}/6]" in result.stdout
    report = (out / "report.md").read_text()
    assert "| int8 |" in report and "| float32 |" in report and "overlays.png" in report
    for picture in ("overlays.png", "latency_miou.png", "confusion_int8.png"):
        assert os.path.getsize(out / picture) > 1000
    results = json.loads((out / "results.json").read_text())
    assert set(results["artifacts"]) == {"keras", "float32", "int8"}
    assert results["model"].startswith("unet, ") and results["model"] in report


@pytest.mark.slow
def test_export_qat_and_pruned_modes(run_dir, data, tmp_path, capsys):
    assert main(["export", str(run_dir / "best.keras"), "--out", str(tmp_path), "--input-size", "32",
                 "--modes", "qat_int8", "qat_int4", "pruned_float32", "--calibration-data", str(data),
                 "--qat-steps", "2", "--sparsity", "0.6", "--prune-epochs", "2", "--batch-size", "4"]) == 0
    assert "sparsity 0.60" in capsys.readouterr().out
    qat = json.loads((tmp_path / "best_qat_int8.tflite.json").read_text())
    assert qat["training"] == "qat" and qat["input"]["dtype"] == "uint8"
    assert not [op for op in qat["ops"] if op.startswith("FLEX") or op == "DELEGATE"]
    qat4 = json.loads((tmp_path / "best_qat_int4.tflite.json").read_text())
    assert qat4["training"] == "qat" and qat4["fine_tune"]["steps"] == 2 and qat4["fine_tune"]["batch_size"] == 4
    assert qat4["quantizer"]["weights"].get("int4", 0) > 0
    pruned = json.loads((tmp_path / "best_pruned_float32.tflite.json").read_text())
    assert abs(pruned["sparsity"] - 0.6) < 0.02 and pruned["gzip_bytes"] < pruned["size_bytes"]


def test_int8_with_int8_io(run_dir, data, tmp_path):
    assert main(["export", str(run_dir / "best.keras"), "--out", str(tmp_path), "--input-size", "32",
                 "--modes", "int8", "--io-dtype", "int8", "--calibration-data", str(data)]) == 0
    info = json.loads((tmp_path / "best_int8.tflite.json").read_text())
    assert info["input"]["dtype"] == "int8" and info["input"]["quantization"] == {"scale": 1.0, "zero_point": -128}
    assert "DEQUANTIZE" not in info["ops"] and "QUANTIZE" not in info["ops"]  # integer from end to end
    assert main(["evaluate", str(tmp_path / "best_int8.tflite"), "--data", str(data)]) == 0


@pytest.mark.slow
def test_quantize_study_writes_table_plot_and_sensitivity(run_dir, data, tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["quantize-study", str(run_dir / "best.keras"), "--data", str(data), "--out", str(out),
                 "--input-size", "32", "--modes", "float32", "float16", "int8", "int16x8", "qat_int8",
                 "pruned_int8", "--threads", "1", "--runs", "2", "--qat-steps", "2", "--prune-epochs", "1",
                 "--batch-size", "4", "--num-calibration", "8", "--sensitivity"]) == 0
    # int16x8 runs its convolutions on LiteRT's reference kernels: the study says so, naming them
    assert any(line.startswith("  note: int16x8 ran ") and "CONV_2D" in line
               for line in capsys.readouterr().out.splitlines())
    result = json.loads((out / "study.json").read_text())
    rows = {row["mode"]: row for row in result["rows"]}
    assert list(rows) == ["float32", "float16", "int8", "int16x8", "qat_int8", "pruned_int8"]
    assert rows["float32"]["agreement"] == 1.0 and rows["float32"]["miou_drop"] == 0.0
    assert rows["int8"]["size_bytes"] < rows["float16"]["size_bytes"] < rows["float32"]["size_bytes"]
    for row in rows.values():
        assert 0 <= row["agreement"] <= 1 and row["latency_ms"]["1"] > 0 and 0 <= row["miou"] <= 1
    assert result["sensitivity"] and result["sensitivity"][0]["rmse_over_scale"] >= result["sensitivity"][-1][
        "rmse_over_scale"]
    assert "| qat_int8 |" in (out / "study.md").read_text() and os.path.getsize(out / "study.png") > 1000


def test_export_takes_size_and_provenance_from_the_run(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir / "best.keras"), "--out", str(tmp_path), "--modes", "float32"]) == 0
    info = json.loads((tmp_path / "best_float32.tflite.json").read_text())
    assert info["input"]["shape"] == [1, 32, 32, 3]  # the run's training crop: no --input-size needed
    assert info["provenance"]["architecture"] == "unet"
    assert info["provenance"]["builder_args"] == {"filters": 4, "depth": 2}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [entry["artifact"] for entry in manifest["artifacts"]] == ["best_float32.tflite"]


FRAMEWORK_LOG = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|cuda", re.M)  # TensorFlow's C++ logs


def bad_inputs(root):
    """Every subcommand (`kseg --help`'s list) with input it must refuse in one line: (arguments, what it says)."""
    empty, missing = root / "empty", str(root / "missing.keras")
    empty.mkdir()
    truncated = root / "truncated.keras"
    truncated.write_bytes(b"PK\x03\x04 cut short")
    return {
        "demo": (["demo", "--steps", "0", "--out", str(root / "demo")], "steps must be a positive"),
        "train": (["train", "--data", str(empty), "--out", str(root / "run")], str(empty)),
        "evaluate": (["evaluate", str(truncated), "--data", "synthetic"], "corrupt or truncated"),
        "predict": (["predict", missing, str(empty), "--out", str(root / "labels")], "no such file"),
        "export": (["export", str(truncated), "--out", str(root / "out")], "corrupt or truncated"),
        "quantize-study": (["quantize-study", missing, "--out", str(root / "study")], "no such file"),
        "bench": (["bench", str(truncated)], "corrupt or truncated"),
        "data check": (["data", "check", str(empty)], str(empty)),
        "data pack": (["data", "pack", str(empty), "--out", str(root / "shards")], str(empty)),
        "data synth": (["data", "synth", str(root / "synth"), "--num-images", "0"], "num-images"),
        "convert": (["convert", "torchvision:lraspp_mobilenet_v3_large", "--weights", missing, "--out",
                     str(root / "converted")], "missing.keras"),
        "push": (["push", str(empty), "hf://org/name"], str(empty)),
        "models": (["models", "--no-such-flag"], "unrecognized arguments"),
    }


@pytest.mark.slow
def test_no_subcommand_prints_a_framework_log_line(tmp_path):
    """Fresh processes as on a fresh install (no TF_CPP_MIN_LOG_LEVEL set by the caller), bad or empty input."""
    import concurrent.futures

    from kseg.cli import parser

    cases = bad_inputs(tmp_path)
    commands = parser()._subparsers._group_actions[0].choices
    listed = {name for name, sub in commands.items() if not sub._subparsers} | {
        f"{name} {child}" for name, sub in commands.items() if sub._subparsers
        for child in sub._subparsers._group_actions[0].choices}
    assert set(cases) == listed  # a new subcommand gets a case here
    env = {key: value for key, value in os.environ.items() if not key.startswith("TF_CPP")}

    def run(args):
        return subprocess.run([sys.executable, "-m", "kseg.cli", *args], capture_output=True, text=True, env=env,
                              timeout=600)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = dict(zip(cases, pool.map(run, [args for args, _ in cases.values()])))
    for name, result in results.items():
        said = result.stderr.strip().splitlines()
        assert result.returncode == 2 and said and cases[name][1] in said[-1], (name, result.stderr)
        assert "Traceback" not in result.stderr, (name, result.stderr)
        assert not FRAMEWORK_LOG.search(result.stdout + result.stderr), (name, result.stdout, result.stderr)


def test_the_command_line_starts_without_tensorflow():
    code = "import sys, kseg.cli; kseg.cli.parser(); print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "False"]


@pytest.mark.slow
def test_builder_argument_errors_are_one_line_and_debug_shows_the_trace(tmp_path):
    args = ["train", "--model", "deeplabv3plus", "--model-arg", "output_stride=12", "--steps", "1",
            "--out", str(tmp_path / "o")]
    result = kseg(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "kseg: error: output_stride must be one of (8, 16, 32), got 12"
    assert result.stdout == ""  # checked before any setting is printed
    result = kseg("--debug", *args)
    assert result.returncode == 1 and "Traceback" in result.stderr and "output_stride must be" in result.stderr


def test_data_check_lists_skipped_files_and_train_runs_on_a_flat_folder(tmp_path, capsys):
    from test_training import write_folder

    root = write_folder(tmp_path / "cells", 6, grey=True, labels=(0, 255))
    (root / "images" / ".DS_Store").write_bytes(b"\0")
    (root / "masks" / "notes.txt").write_text("drawn by hand")
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "2 file(s) skipped" in out and ".DS_Store: hidden file" in out and "notes.txt: not a" in out
    assert "255 is read as the foreground" in out
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--model-arg", "filters=4", "--model-arg", "depth=2",
                 "--steps", "12", "--verbose", "0", "--out", str(run)]) == 0
    captured = capsys.readouterr()
    assert "kseg: note: skipped" in captured.err
    assert "* augment    turns" in captured.out and "* loss       ce+dice" in captured.out
    assert "kseg: trained 12 steps" in captured.out
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 12 and config["num_classes"] == 2


def test_pack_then_train_on_the_shards(data, tmp_path, capsys):
    shards = tmp_path / "shards"
    assert main(["data", "pack", str(data), "--out", str(shards), "--shards", "2"]) == 0
    assert "train 16 pairs in 2 shards" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(shards), "--steps", "8", "--val-every", "3", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == str(shards) and config["num_classes"] == 6 and os.path.exists(out / "best.keras")
