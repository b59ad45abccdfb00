"""Choosing the model by latency (`kseg train --max-latency`): the best-ranked candidate within the budget, measured
best first; an impossible budget in one line; the table stored with the run."""

import json

import pytest
from conftest import requires_tensorflow

from kseg.errors import KsegError
from kseg.training import TrainConfig, latency

RANKED = (latency.Candidate("ddrnet", {}, "best"), latency.Candidate("lraspp", {}, "second"),
          latency.Candidate("unet", {"filters": 8}, "third"), latency.Candidate("unet", {"filters": 4}, "last"))


def stand_in(times):
    measured = []

    def measure(candidate, size, threads):
        measured.append(candidate.label)
        return times[candidate.label]

    return measure, measured


def test_the_best_ranked_candidate_within_the_budget_wins_and_those_below_are_not_measured():
    measure, measured = stand_in({"ddrnet": 40.0, "lraspp": 18.0, "unet(filters=8)": 6.0, "unet(filters=4)": 2.0})
    chosen, table = latency.choose(20, measure, candidates=RANKED, size=(512, 512), threads=2)
    assert chosen.label == "lraspp" and measured == ["ddrnet", "lraspp"]
    assert [(row["model"], row["int8_ms"], row["within"]) for row in table] == [
        ("ddrnet", 40.0, False), ("lraspp", 18.0, True)]
    text = latency.describe(table, 20, size=(512, 512), threads=2)
    assert "20 ms" in text and "* chosen" in text and "lraspp" in text
    chosen, _ = latency.choose(20, measure, candidates=RANKED, model="unet")  # one architecture's widths only
    assert chosen.label == "unet(filters=8)"


def test_an_impossible_budget_is_one_line_naming_the_fastest():
    measure, measured = stand_in({"ddrnet": 40.0, "lraspp": 18.0, "unet(filters=8)": 6.0, "unet(filters=4)": 2.5})
    with pytest.raises(KsegError) as error:
        latency.choose(1, measure, candidates=RANKED, size=(256, 256), threads=1)
    message = str(error.value)
    assert "\n" not in message and "unet(filters=4)" in message and "2.5 ms" in message and "256x256" in message
    assert len(measured) == 4
    with pytest.raises(KsegError, match="positive"):
        latency.choose(0, measure, candidates=RANKED)
    with pytest.raises(KsegError, match="no latency candidates for model 'segnet'"):
        latency.choose(20, measure, candidates=RANKED, model="segnet")


def test_the_ranking_names_registered_architectures_and_a_budget_needs_the_front_end():
    import kseg

    assert {c.model for c in latency.CANDIDATES} <= set(kseg.models.names())
    assert all(c.expected for c in latency.CANDIDATES)
    with pytest.raises(KsegError, match="chosen before training"):
        TrainConfig(max_latency=20).check()


@requires_tensorflow
def test_measured_tiny_candidates():
    """Real int8 files at 48x48: a heavy U-Net first, a tiny one second; the budget fits the tiny one only."""
    from kseg.deploy import stage

    heavy, tiny = latency.Candidate("unet", {"filters": 48, "depth": 4}, "a"), latency.Candidate(
        "unet", {"filters": 4, "depth": 2}, "b")
    tiny_ms = stage.int8_latency(tiny, size=(48, 48), threads=1, classes=3, runs=3)
    heavy_ms = stage.int8_latency(heavy, size=(48, 48), threads=1, classes=3, runs=3)
    assert heavy_ms > 4 * tiny_ms, (heavy_ms, tiny_ms)  # about 100x the MACs
    budget = 2 * tiny_ms + 0.5

    def measure(candidate, size, threads):
        return stage.int8_latency(candidate, size=size, threads=threads, classes=3, runs=3)

    chosen, table = latency.choose(budget, measure, candidates=(heavy, tiny), size=(48, 48), threads=1)
    assert chosen == tiny and table[-1]["int8_ms"] <= budget and not table[0]["within"]


@requires_tensorflow
@pytest.mark.slow
def test_train_with_max_latency_chooses_prints_and_stores_the_table(tmp_path, capsys):
    from kseg.cli import main

    data = tmp_path / "data"
    assert main(["data", "synth", str(data), "--num-images", "8", "--size", "32"]) == 0
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "unet", "--max-latency", "1000", "--latency-size", "32x32",
                 "--latency-threads", "1", "--steps", "6", "--crop-size", "32", "--batch-size", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "choosing the model for 1000 ms" in printed and "* chosen" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "unet" and config["model_kwargs"] == {"filters": 16, "depth": 4}  # unet's best-ranked
    assert config["max_latency"] == 1000 and config["latency_size"] == [32, 32] and config["latency_threads"] == 1
    assert [row["within"] for row in config["latency_table"]] == [True]
    # a run folder that chose for this budget keeps its choice (a resumed run rebuilds the model it checkpointed)
    from kseg.deploy import stage

    def never(candidate, size, threads):
        raise AssertionError("measured again")

    again = stage.choose_by_latency(TrainConfig(data=str(data), model="unet", max_latency=1000, latency_size=(32, 32),
                                                latency_threads=1, out_dir=str(out)), measure=never)
    assert again.model_kwargs == {"filters": 16, "depth": 4} and again.latency_table == config["latency_table"]
    assert "already chose unet for 1000 ms: kept" in capsys.readouterr().out
