"""benchmarks/bench_gold.py: its disjoint data parts, hh-rlhf prompt conversion and result tables."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gold.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gold", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_split_parts_disjoint_sized_deterministic(bench):
    parts = bench.split_parts(100, {"gold": 60, "proxy": 15, "heldout": None}, seed=3)
    assert [len(parts[k]) for k in ("gold", "proxy", "heldout")] == [60, 15, 25]
    assert sorted(parts["gold"] + parts["proxy"] + parts["heldout"]) == list(range(100))
    assert set(parts["gold"]).isdisjoint(parts["proxy"])
    assert parts == bench.split_parts(100, {"gold": 60, "proxy": 15, "heldout": None}, seed=3)
    assert parts["proxy"] != bench.split_parts(100, {"gold": 60, "proxy": 15, "heldout": None}, seed=4)["proxy"]
    with pytest.raises(ValueError, match="more than"):
        bench.split_parts(10, {"gold": 8, "proxy": 5}, seed=0)


def test_hh_transcript_becomes_the_conversation_to_answer(bench):
    t = "\n\nHuman: hi there\n\nAssistant: Hello!\n\nHuman: tell me a joke\n\nAssistant: Why did the chicken"
    assert bench.hh_prompt_messages(t) == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "tell me a joke"},
    ]
    assert bench.hh_prompt_messages("no turns at all") is None
    # ends on an assistant turn before the last "Assistant:" would leave nothing to answer
    assert bench.hh_prompt_messages("\n\nAssistant: a\n\nAssistant: b") is None


def test_prompt_rows_dedupe_conversations_keep_first(bench):
    rows = [{"chosen": "\n\nHuman: a\n\nAssistant: x"}, {"chosen": "\n\nHuman: a\n\nAssistant: y"},
            {"chosen": "broken"}, {"chosen": "\n\nHuman: b\n\nAssistant: z"}]
    out = bench.prompt_rows(rows, "p-")
    assert [r["id"] for r in out] == ["p-0000", "p-0003"]
    assert out[1]["messages"] == [{"role": "user", "content": "b"}]


def test_tables_read_the_report_fields(bench):
    judge = {"curve": [{"n": 1, "kl_bound": 0.0, "proxy_mean": 0.1, "gold_mean": -0.2, "gold_se": 0.05,
                        "oracle_gold_mean": -0.2},
                       {"n": 4, "kl_bound": 0.636, "proxy_mean": 0.9, "gold_mean": -0.1, "gold_se": 0.04,
                        "oracle_gold_mean": 0.7}]}
    text = bench.curve_table(judge)
    assert "| 4 | 0.797 | +0.9 | -0.1 ± 0.040 | +0.7 |" in text
    summary = {"baseline": {"eval": {"reward_mean": 0.5}, "gold": {"gold_mean": 0.1}}}
    rounds = [{"eval": {"reward_mean": 0.7}, "gold": {"gold_mean": 0.2, "gold_win_rate_vs_base": 0.56,
                                                      "gold_win_rate_vs_base_ci95": [0.5, 0.62],
                                                      "gold_win_rate_vs_control": 0.4,
                                                      "gold_win_rate_vs_control_ci95": [0.3, 0.5]}}]
    control = [{"eval": {"reward_mean": 0.6}, "gold": {"gold_mean": 0.15}}]
    table = bench.loop_table(summary, rounds, control)
    assert "| base policy | +0.5 | +0.1 | — | — | — |" in table
    assert ("| round 0 best-of-N (proxy) | +0.7 | +0.2 | 0.560 [0.500, 0.620] | n/a | 0.400 [0.300, 0.500] |"
            in table)
    assert "| round 0 control (random) | +0.6 | +0.15 | n/a | n/a | — |" in table


def test_gold_rm_is_trained_with_the_rm_sweeps_chosen_recipe(bench):
    """Issue 18: the gold RM's `rm train` options are the sweep's recipe, and `rm train` reads them as such."""
    from bonsynth.cli.rm import train_cmd

    args = bench.gold_rm_args({"epochs": 1.0, "max_length": 128})
    assert args == bench.rm_recipe_args()
    ctx = train_cmd.make_context("train", ["--base", "b", "--data", "d", "--out", "o", "--objective", "pairwise", *args])
    got = {k: ctx.params[k] for k in bench.RM_RECIPE}
    assert got == {"epochs": 1.0, "lr": 5e-5, "batch_size": 8, "max_length": 128, "lr_scheduler": "linear",
                   "warmup_ratio": 0.0}
    smoke = train_cmd.make_context("train", ["--base", "b", "--data", "d", "--out", "o", "--objective", "pairwise",
                                             *bench.gold_rm_args({"epochs": 0.5, "max_length": 64})]).params
    assert (smoke["epochs"], smoke["max_length"], smoke["lr"]) == (0.5, 64, 5e-5)
    with pytest.raises(ValueError, match="not RM_RECIPE fields"):
        bench.rm_recipe_args(learning_rate=1e-4)
