"""benchmarks/bench_seed_workflow.py: its held-out splits and the seed's 2-point criterion, on hand-made data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bonsynth.merge.config import parse_config

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_seed_workflow.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_seed_workflow", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # the script's work sits behind `if __name__ == "__main__"`
    return mod


def test_split_indices_disjoint_cover_deterministic(bench):
    train, test = bench.split_indices(101, 0.2, seed=7)
    assert set(train).isdisjoint(test) and sorted(train + test) == list(range(101))
    assert len(test) == 20
    assert (train, test) == bench.split_indices(101, 0.2, seed=7)
    assert test != bench.split_indices(101, 0.2, seed=8)[1]


def test_split_indices_tiny_and_bad_fraction(bench):
    assert bench.split_indices(2, 0.01, 0) in (([0], [1]), ([1], [0]))
    assert bench.split_indices(3, 0.99, 0)[0]  # one row always left to train on
    with pytest.raises(ValueError):
        bench.split_indices(10, 1.0, 0)


def test_write_split_files(bench, tmp_path: Path):
    src = tmp_path / "src.jsonl"
    rows = [json.dumps({"i": i}) for i in range(50)]
    src.write_text("\n".join(rows) + "\n\n")  # a blank line is not a row
    train, test = bench.write_split(src, tmp_path / "out", "t", 0.2, seed=0)
    a, b = train.read_text().splitlines(), test.read_text().splitlines()
    assert len(b) == 10 and sorted(a + b, key=lambda r: json.loads(r)["i"]) == rows
    again = bench.write_split(src, tmp_path / "again", "t", 0.2, seed=0)
    assert again[1].read_text() == test.read_text()
    small = bench.write_split(src, tmp_path / "small", "t", 0.25, seed=0, limit=12)
    a, b = small[0].read_text().splitlines(), small[1].read_text().splitlines()
    assert (len(a), len(b)) == (9, 3) and set(a + b) <= set(rows) and not set(a) & set(b)


def test_criterion_on_hand_made_numbers(bench):
    acc = {
        "rm-a": {"a": 0.80, "b": 0.50},
        "rm-b": {"a": 0.55, "b": 0.70},
        "merged-x": {"a": 0.785, "b": 0.69},   # -1.5 and -1 points: met
        "merged-y": {"a": 0.81, "b": 0.675},   # better on a, -2.5 on b: missed
        "merged-z": {"a": 0.70, "b": 0.72},    # -10 on a: missed
    }
    res = bench.criterion(acc, {"a": "rm-a", "b": "rm-b"}, ["merged-x", "merged-y", "merged-z"])
    x, y, z = (res["merges"][m] for m in ("merged-x", "merged-y", "merged-z"))
    assert x["met"] and x["shortfall"] == pytest.approx({"a": 0.015, "b": 0.01})
    assert not y["met"] and y["met_tasks"] == {"a": True, "b": False}
    assert y["shortfall"]["a"] == pytest.approx(-0.01) and y["worst"] == pytest.approx(0.025)
    assert not z["met"] and z["worst"] == pytest.approx(0.10)
    assert res["closest"] == "merged-x"
    # exactly 2 points is within "a couple percent"
    edge = bench.criterion({"rm-a": {"a": 0.80}, "m": {"a": 0.78}}, {"a": "rm-a"}, ["m"])
    assert edge["merges"]["m"]["met"]


def test_results_table_marks_met_missed_and_closest(bench):
    acc = {"rm-thumbs": {"thumbs": 0.8, "pairs": 0.5}, "rm-pairs": {"thumbs": 0.5, "pairs": 0.7},
           "merged-ties": {"thumbs": 0.79, "pairs": 0.69}, "merged-linear": {"thumbs": 0.6, "pairs": 0.7}}
    auc = {m: {"thumbs": 0.9} for m in acc}
    crit = bench.criterion(acc, {"thumbs": "rm-thumbs", "pairs": "rm-pairs"}, ["merged-ties", "merged-linear"])
    text = bench.results_table(acc, auc, ["thumbs", "pairs"], crit, {})
    lines = text.splitlines()
    assert lines[0].startswith("| model | thumbs acc | thumbs AUC | pairs acc |")
    ties = next(ln for ln in lines if ln.startswith("| merged-ties"))
    linear = next(ln for ln in lines if ln.startswith("| merged-linear"))
    assert "**met**" in ties and "closest" in ties and "thumbs -1.0" in ties
    assert "**missed**" in linear and "closest" not in linear and "thumbs -20.0" in linear


def test_merge_configs_parse_and_keep_the_seed_weights(bench, tmp_path: Path):
    rms = {t: str(tmp_path / f"rm-{t}") for t in ("thumbs", "pairs", "hh")}
    cfgs = bench.merge_configs(str(tmp_path / "base"), rms)
    assert set(cfgs) == {"ties", "linear", "dare_ties"}
    for name, data in cfgs.items():
        cfg = parse_config(data, name)
        assert cfg.merge_method == name
        weights = [m.parameters["weight"] for m in cfg.models if m.parameters]
        assert weights == [0.5, 0.6, 0.05]
    ties = parse_config(cfgs["ties"])
    assert [m.parameters["density"] for m in ties.models if m.parameters] == [1.0, 1.0, 1.0]
    assert ties.base_model == str(tmp_path / "base")
    two = bench.merge_configs("base", {t: rms[t] for t in ("thumbs", "pairs")})  # hh-rlhf file absent
    assert len(parse_config(two["ties"]).models) == 3
