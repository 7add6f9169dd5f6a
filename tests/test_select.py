import math

import pytest

from bonsynth.errors import ConfigError
from bonsynth.generate.summary import kl_bound, summarize
from bonsynth.select.selection import (
    SelectionConfig,
    distinct_n,
    find_duplicates,
    parse_select,
    select_candidates,
)


def test_best_picks_argmax_and_ties_go_to_earlier_candidate():
    res = select_candidates(["a b", "c d", "e f"], [1.0, 3.0, 3.0], [2, 2, 2], SelectionConfig(write_pairs=True))
    assert res.selected == [1]
    assert res.pair == (1, 0)


def test_modes_write_distinct_things():
    texts, rewards = ["a b", "c d", "e f"], [1.0, 3.0, 2.0]
    best = select_candidates(texts, rewards, [2] * 3, SelectionConfig())
    assert best.selected == [1] and best.pair is None  # best: SFT rows only, unless pairs are asked for
    both = select_candidates(texts, rewards, [2] * 3, SelectionConfig(write_pairs=True))
    assert both.selected == [1] and both.pair == (1, 0)
    pairs = select_candidates(texts, rewards, [2] * 3, SelectionConfig(mode="pairs"))
    assert pairs.selected == [] and pairs.pair == (1, 0)  # pairs: DPO pairs only
    topk = select_candidates(texts, rewards, [2] * 3, SelectionConfig(mode="top-k", k=2, write_pairs=True))
    assert topk.selected == [1, 2] and topk.pair == (1, 0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_rewards_are_never_selected(bad):
    texts = ["a b", "c d", "e f", "g h"]
    # inf would win and -inf would be the rejected side; NaN sorts unpredictably: none may be picked.
    rewards = [0.5, bad, 2.0, -1.0]
    res = select_candidates(texts, rewards, [2] * 4, SelectionConfig(mode="top-k", k=4, write_pairs=True))
    assert res.nonfinite == [1]
    assert res.selected == [2, 0, 3]
    assert res.pair == (2, 3)
    only_bad = select_candidates(["a", "b"], [bad, bad], [1, 1], SelectionConfig(write_pairs=True))
    assert only_bad.selected == [] and only_bad.pair is None


def test_dedup_ignores_nonfinite_candidates():
    # The NaN candidate comes first; its finite twin must survive dedup and be selected.
    res = select_candidates(["same text", "same text", "other"], [math.nan, 1.0, 0.0], [2] * 3,
                            SelectionConfig(dedup=True))
    assert res.duplicates == [] and res.selected == [1]


def test_top_k_orders_by_reward():
    res = select_candidates(list("abcd"), [0.1, 0.9, 0.5, 0.7], [1] * 4, SelectionConfig(mode="top-k", k=3))
    assert res.selected == [1, 3, 2]


def test_pair_is_best_against_worst_and_respects_min_margin():
    texts = ["w x", "y z", "u v"]
    res = select_candidates(texts, [0.0, 2.0, 1.0], [1] * 3, SelectionConfig(mode="pairs"))
    assert res.pair == (1, 0)
    res = select_candidates(texts, [0.0, 2.0, 1.0], [1] * 3, SelectionConfig(mode="pairs", min_margin=2.5))
    assert res.pair is None and res.skipped_pair_reason == "margin"


def test_pair_never_identical_texts():
    res = select_candidates(["same", "same", "Same "], [1.0, 0.0, -1.0], [1] * 3, SelectionConfig(mode="pairs"))
    assert res.pair is None and res.skipped_pair_reason == "identical"
    res = select_candidates(["same", "other", "same"], [1.0, 0.0, -1.0], [1] * 3, SelectionConfig(mode="pairs"))
    assert res.pair == (0, 1)


def test_all_equal_rewards_give_no_pair():
    res = select_candidates(["a", "b"], [1.0, 1.0], [1, 1], SelectionConfig(mode="pairs"))
    assert res.pair is None


def test_min_reward_filters_selection():
    res = select_candidates(["a", "b", "c"], [0.1, 0.5, 0.2], [1] * 3, SelectionConfig(mode="top-k", k=3, min_reward=0.15))
    assert res.selected == [1, 2]
    assert res.below_min_reward == 1
    res = select_candidates(["a", "b"], [0.1, 0.2], [1, 1], SelectionConfig(min_reward=1.0, write_pairs=True))
    assert res.selected == [] and res.pair is None and res.skipped_pair_reason == "min-reward"


def test_dedup_exact_and_near():
    base = "the captain sails the ship across the stormy sea tonight with her crew"
    texts = [base, base.upper(), base + " again", "something else entirely different here"]
    assert find_duplicates(texts, 0.8) == [1, 2]
    res = select_candidates(texts, [0.0, 5.0, 4.0, 1.0], [1] * 4, SelectionConfig(mode="top-k", k=2, dedup=True, near_dup_threshold=0.8))
    assert res.duplicates == [1, 2]
    assert res.selected == [3, 0]


def test_length_normalize():
    res = select_candidates(["a", "b"], [10.0, 4.0], [10, 2], SelectionConfig(length_normalize=True))
    assert res.selected == [1]


def test_parse_select():
    assert parse_select("best") == ("best", 1)
    assert parse_select("top-k:3") == ("top-k", 3)
    for bad in ("top-k:0", "worst", "top-k:x"):
        with pytest.raises(ConfigError):
            parse_select(bad)


def test_distinct_2_and_kl_bound():
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a"], 2) == 0.0
    assert kl_bound(1) == 0.0
    assert kl_bound(4) == pytest.approx(math.log(4) - 0.75)


def test_summarize_means_match_by_hand():
    rows = [
        {"candidates": [{"text": "a b", "reward": 1.0, "num_tokens": 2, "finish_reason": "stop"},
                        {"text": "c d", "reward": 3.0, "num_tokens": 2, "finish_reason": "length"}],
         "selected": [1], "pair": [1, 0]},
        {"candidates": [{"text": "e f", "reward": -1.0, "num_tokens": 2, "finish_reason": "stop"},
                        {"text": "g h", "reward": 0.0, "num_tokens": 2, "finish_reason": "stop"}],
         "selected": [1], "pair": None, "pair_skipped": "margin"},
    ]
    counts, s = summarize(rows, 2)
    assert s["mean_reward_all"] == pytest.approx(0.75)
    assert s["mean_reward_selected"] == pytest.approx(1.5)
    assert s["bon_gain"] == pytest.approx(0.75)
    assert counts["pairs"] == 1 and counts["pairs_skipped"] == {"margin": 1}
    assert counts["finish_reasons"] == {"length": 1, "stop": 3}
