"""`kseg.runtime.bench`: the fields an engineer reads (invoke alone, copies, start-up, memory, per-op times) exist and
agree with each other. Timings themselves are not asserted: they depend on the machine."""

import importlib.util

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

import kseg
from kseg.cli import main
from kseg.deploy import litert, modes
from kseg.runtime import bench, profiler

pytestmark = requires_tensorflow
SIZE = (40, 48)
STEPS = bench.STEPS
requires_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("onnxruntime", "tf2onnx")),
    reason="needs kseg[onnx]",
)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A tiny DeepLabV3+ as float32 and int8 LiteRT files and its .keras checkpoint."""
    keras.utils.set_random_seed(0)
    model = kseg.models.get("deeplabv3plus", 3, tiny=True)
    out = tmp_path_factory.mktemp("bench")
    calibration = [np.random.default_rng(i).uniform(0, 255, (1, *SIZE, 3)).astype("float32") for i in range(2)]
    paths = {"model": model, "keras": str(out / "m.keras")}
    model.save(paths["keras"])
    for mode in ("float32", "int8"):
        paths[mode] = str(out / f"m_{mode}.tflite")
        litert.to_litert(model, paths[mode], mode=mode, artifact=modes.Artifact(SIZE), calibration=calibration)
    return paths


def check_consistent(stats, runs):
    assert stats["runs"] == runs and stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"]
    for step in STEPS:
        assert 0 <= stats[step]["min_ms"] <= stats[step]["mean_ms"]
    # one clock splits each call into its steps: they add up to the call, and invoke alone is never longer
    assert stats["invoke"]["mean_ms"] <= stats["mean_ms"]
    assert sum(stats[step]["mean_ms"] for step in STEPS) == pytest.approx(stats["mean_ms"], rel=1e-9)
    assert stats["init_ms"] > 0 and stats["first_run_ms"] > 0
    if stats["peak_rss_growth_mb"] is not None:  # Linux: the peak (VmHWM) is never below the current size
        assert stats["peak_rss_growth_mb"] >= stats["rss_growth_mb"]
        assert stats["peak_measured"].startswith("VmHWM")


def check_ops(rows):
    assert rows, "no op times"
    assert [row["ms"] for row in rows] == sorted((row["ms"] for row in rows), reverse=True)
    assert all(row["nodes"] >= 1 and row["ms"] >= 0 and 0 <= row["share"] <= 1 for row in rows)
    assert sum(row["share"] for row in rows) == pytest.approx(1, abs=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_litert_steps_startup_memory_and_ops(artifacts, mode):
    stats = bench.benchmark(artifacts[mode], threads=1, runs=4, warmup=1, ops=True)
    check_consistent(stats, 4)
    assert stats["input_size"] == list(SIZE) and stats["runtime"].startswith("ai_edge_litert")
    check_ops(stats["ops"])
    assert stats["ops_source"].startswith("LiteRT profiler")
    names = " ".join(row["op"] for row in stats["ops"])
    assert "onv" in names  # convolutions (XNNPACK's "Convolution ..." or the builtin CONV_2D) are profiled


@pytest.mark.slow
def test_a_fresh_process_measures_the_same_fields(artifacts):
    stats = bench.benchmark(artifacts["float32"], threads=1, runs=3, warmup=1, fresh_process=True)
    assert stats["fresh_process"] is True
    check_consistent(stats, 3)


@requires_onnx
def test_onnx_steps_startup_memory_and_ops(artifacts, tmp_path):
    from kseg.deploy import onnx_export

    path = str(tmp_path / "m.onnx")
    onnx_export.to_onnx(artifacts["model"], path, artifact=modes.Artifact(SIZE))
    stats = bench.benchmark(path, threads=1, runs=4, warmup=1, ops=True)
    check_consistent(stats, 4)
    check_ops(stats["ops"])
    assert "Conv" in [row["op"] for row in stats["ops"]] and stats["ops_source"] == "onnxruntime profiler"


def test_keras_has_no_steps_to_split(artifacts):
    stats = bench.benchmark(artifacts["keras"], threads=1, runs=2, warmup=1, input_size=SIZE)
    assert all(stats[step] is None for step in STEPS) and stats["mean_ms"] > 0
    assert stats["init_ms"] > 0 and stats["first_run_ms"] > 0
    with pytest.raises(kseg.errors.KsegError, match="per-op"):
        bench.benchmark(artifacts["keras"], runs=1, warmup=0, input_size=SIZE, ops=True)


def test_bench_ops_on_the_command_line(artifacts, tmp_path, capsys):
    assert main(["bench", artifacts["int8"], "--threads", "1", "--runs", "3", "--warmup", "1", "--ops",
                 "--top-ops", "3"]) == 0
    out = capsys.readouterr().out
    assert "invoke" in out and "input copy" in out and "init (load + allocate)" in out
    assert "slowest first" in out and len([line for line in out.splitlines() if line.startswith("    ")]) == 4


SUMMARY = """
============================== Summary by node type ==============================
                         [Node type]    [count]   [avg ms]   [avg %]   [cdf %]   [mem KB] [times called]
  Delegate/Convolution (NHWC, F32) IGEMM         12      0.500    60.000%    60.000%      0.000            240
                Delegate/Resize Bilinear          2      1.000    40.000%   100.000%      0.000             40

Timings (microseconds): count=14 curr=1000
"""


def test_the_litert_summary_table_is_read_per_run():
    rows = profiler.parse_summary(SUMMARY, runs=20)
    assert rows[0] == {"op": "Delegate/Convolution (NHWC, F32) IGEMM", "nodes": 12, "ms": 6.0, "share": 0.6}
    assert rows[1]["op"] == "Delegate/Resize Bilinear" and rows[1]["ms"] == 2.0
    with pytest.raises(kseg.errors.KsegError):
        profiler.parse_summary("no table", runs=1)


def test_the_onnxruntime_profile_counts_the_last_runs_only():
    events = [{"cat": "Session", "name": "model_run", "ts": ts, "dur": 50} for ts in (0, 100, 200)]
    for ts in (10, 110, 210):
        events += [{"cat": "Node", "name": "conv_kernel_time", "ts": ts, "dur": 30, "args": {"op_name": "Conv"}},
                   {"cat": "Node", "name": "conv_fence_before", "ts": ts, "dur": 1, "args": {"op_name": "Conv"}},
                   {"cat": "Node", "name": "up_kernel_time", "ts": ts + 1, "dur": 10, "args": {"op_name": "Resize"}}]
    rows = bench.summarise_onnx_profile(events, runs=2)
    assert rows == [{"op": "Conv", "nodes": 1, "ms": 0.03, "share": 0.75},
                    {"op": "Resize", "nodes": 1, "ms": 0.01, "share": 0.25}]


@pytest.mark.slow
def test_export_notes_a_file_slower_than_float32_and_the_reference_kernels_behind_it(tmp_path, capsys):
    """int16x8 runs its convolutions on LiteRT's reference kernels: the export says so in one note, naming them."""
    from kseg.deploy import stage

    keras.utils.set_random_seed(0)
    model = kseg.models.get("unet", 3, tiny=True)  # the fixture's random DeepLabV3+ overflows int16x8's ranges
    train = kseg.data.from_synthetic("train", num_images=4, size=SIZE)
    results = stage.export_checkpoint(model, str(tmp_path), ["float32", "int16x8", "int8"],
                                      input_size=SIZE, train=train, threads=(1,), runs=5)
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  note: ")]
    assert len(notes) == 1 and notes[0].startswith("  note: int16x8 ran ") and "CONV_2D" in notes[0], notes
    assert profiler.slower_than_float32([result for result in results if result.mode != "int16x8"]) == []
    assert profiler.slower_than_float32(results[1:]) == []  # no float32 file: nothing to compare with
