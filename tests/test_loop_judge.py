"""The gold judge in the loop (`eval.judge`) and the random control arm (`control: random`).

The loop's numbers are recomputed here from its files: the judge's scores of every eval candidate by loading
the judge directly, the gold means, the per-prompt win rates and their bootstrap CIs, and the control arm's
random picks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.test_loop import _FULL, _MINIMAL, _PINNED, _merge, _rows, _share_rm, write_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------------- recipe keys


def test_recipes_without_the_new_keys_keep_their_fingerprint():
    from bonsynth.loop import load_recipe
    from bonsynth.loop.recipe import fingerprint_view, parse_recipe

    assert parse_recipe(_MINIMAL).fingerprint() == _PINNED["minimal"]
    assert parse_recipe(_FULL).fingerprint() == _PINNED["full"]
    repo = Path(__file__).resolve().parents[1]
    for name in ("quickstart", "raft-sft", "iterative-dpo"):
        assert load_recipe(repo / "recipes" / f"{name}.yaml").fingerprint() == _PINNED[name], name
    # Spelled out as absent: the same; set: a different loop.
    assert parse_recipe(_merge(_FULL, {"control": None, "eval": {"judge": None}})).fingerprint() == _PINNED["full"]
    judged = parse_recipe(_merge(_FULL, {"eval": {"judge": "demo:rm"}}))
    assert judged.eval.judge == ["demo:rm"] and judged.fingerprint() != _PINNED["full"]
    assert parse_recipe(_merge(_FULL, {"control": "random"})).fingerprint() != _PINNED["full"]
    assert "control" not in fingerprint_view(parse_recipe(_FULL))
    assert "judge" not in fingerprint_view(parse_recipe(_FULL))["eval"]


@pytest.mark.parametrize(("over", "needle"), [
    ({"eval": {"judge": "a", "judge_weights": [1.0]}}, "'eval.judge_weights' needs two or more"),
    ({"eval": {"judge": ["a", "b"], "judge_weights": [1.0]}}, "'eval.judge_weights' has 1 values for 2"),
    ({"eval": {"judge": ["a", "b"], "judge_weights": [1.0, float("nan")]}}, "must be finite"),
    ({"eval": {"judge": []}}, "'eval.judge' is empty"),
    ({"control": "best"}, "control"),
    ({"eval": {"judges": ["a"]}}, "did you mean 'judge'"),
])
def test_bad_judge_and_control_keys_are_one_line_errors(over, needle):
    from bonsynth.errors import ConfigError
    from bonsynth.loop.recipe import parse_recipe

    with pytest.raises(ConfigError) as info:
        parse_recipe(_merge(_MINIMAL, over), source="r.yaml")
    msg = str(info.value)
    assert msg.startswith("r.yaml: ") and "\n" not in msg and needle in msg, msg


def test_missing_judge_fails_before_anything_is_written(tmp_path, monkeypatch, capsys, tiny_policy_dir, tiny_rm_dir,
                                                        prompts_file):
    from tests.test_loop import _loop_cli

    m = SimpleNamespace(policy=tiny_policy_dir, rm=tiny_rm_dir, prompts=prompts_file)
    out = tmp_path / "never"
    recipe = write_recipe(tmp_path / "r.yaml", m, out, eval={"num_prompts": 2, "judge": str(tmp_path / "nope")},
                          prompts_per_round=4)
    code, err = _loop_cli(monkeypatch, capsys, str(recipe))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "eval.judge[0]" in err and "nope" in err and not out.exists()


# ---------------------------------------------------------------------------------------------------- pieces


def test_per_prompt_win_rate_is_all_pairs_with_ties_half():
    from bonsynth.judge.estimator import bootstrap_ci
    from bonsynth.loop.gold import BOOTSTRAP, pair_win, win_rate

    assert pair_win([1.0, 3.0], [2.0, 3.0]) == pytest.approx((0 + 0 + 1 + 0.5) / 4)
    cur = {"a": [1.0, 3.0], "b": [5.0], "only-here": [9.0]}
    other = {"a": [2.0, 3.0], "b": [4.0, 6.0]}
    wr = win_rate(cur, other, seed=3)
    assert wr["prompts"] == 2 and wr["win_rate"] == pytest.approx((0.375 + 0.5) / 2)
    assert wr["ci95"] == list(bootstrap_ci([0.375, 0.5], resamples=BOOTSTRAP, seed=3))


def test_same_files_warning(tmp_path, tiny_rm_dir, tiny_rm2_dir):
    from bonsynth.loop.gold import judge_overlap_warnings, same_model_files
    from bonsynth.loop.recipe import parse_recipe
    from bonsynth.loop.runner import LoopRunner

    copy = shutil.copytree(tiny_rm_dir, tmp_path / "copy-of-rm")
    assert same_model_files(str(tiny_rm_dir), str(tiny_rm_dir) + "/")
    assert same_model_files(str(copy), str(tiny_rm_dir))  # other path, same weights: found by hash
    assert not same_model_files(str(tiny_rm2_dir), str(tiny_rm_dir))
    assert judge_overlap_warnings([str(tiny_rm2_dir)], {"rewards": [str(tiny_rm_dir)]}) == []
    (w,) = judge_overlap_warnings([str(copy)], {"rewards": [str(tiny_rm_dir)]})
    assert str(copy) in w and "rewards" in w and "same model files" in w

    recipe = parse_recipe(_merge(_MINIMAL, {"eval": {"judge": [str(copy)]}}))
    src = SimpleNamespace(rewards=[str(tiny_rm_dir)], eval_rewards=[str(tiny_rm_dir)], labeler=None)
    runner = LoopRunner(recipe, src, tmp_path / "loop", judge=[str(copy)])
    assert len(runner.judge_warnings()) == 1  # eval.rewards defaults to rewards: one warning, not two
    assert LoopRunner(recipe, src, tmp_path / "loop", judge=[str(tiny_rm2_dir)]).judge_warnings() == []


def test_control_data_is_a_seeded_random_candidate_per_prompt(tmp_path):
    from bonsynth.loop.gold import write_control_data
    from bonsynth.loop.sources import derive_seed
    from bonsynth.loop.train_policy import dpo_rows, sft_rows
    from tests.conftest import write_jsonl

    chat = [{"role": "user", "content": "hi"}]
    gen = tmp_path / "gen"
    gen.mkdir()
    rows = [{"id": f"p{i}", "prompt": chat if i % 2 else f"prompt {i}", "selected": [0],
             "candidates": [{"index": j, "text": f"reply {i}.{j}", "reward": float(j)} for j in range(4)]}
            for i in range(12)]
    rows.append({"id": "skipped", "prompt": "x", "skipped": "too long", "candidates": []})
    write_jsonl(gen / "candidates.jsonl", rows)
    assert write_control_data(gen, tmp_path / "c", seed=5, r=1, method="sft") == {"rows": 12, "method": "sft"}
    sft = _rows(tmp_path / "c" / "sft.jsonl")
    picks = [derive_seed(5, "control", 1, f"p{i}") % 4 for i in range(12)]
    assert [r.get("completion") or r["messages"][-1]["content"] for r in sft] == \
        [f"reply {i}.{j}" for i, j in enumerate(picks)]
    assert sft[1]["messages"][:-1] == chat and sft[0]["prompt"] == "prompt 0"
    assert len(set(picks)) > 1  # not always the same position (and not the best, index 3, every time)
    before = (tmp_path / "c" / "sft.jsonl").read_bytes()
    write_control_data(gen, tmp_path / "c", seed=5, r=1, method="sft")
    assert (tmp_path / "c" / "sft.jsonl").read_bytes() == before  # reproducible
    write_control_data(gen, tmp_path / "d", seed=5, r=2, method="sft")
    assert (tmp_path / "d" / "sft.jsonl").read_bytes() != before  # another round, other picks

    write_control_data(gen, tmp_path / "e", seed=5, r=1, method="dpo")
    dpo = _rows(tmp_path / "e" / "dpo.jsonl")
    assert len(dpo) == 12 and all(p["chosen"] != p["rejected"] for p in dpo)
    assert [p["chosen"] for p in dpo] == [f"reply {i}.{j}" for i, j in enumerate(picks)]

    class Tok:  # no chat template: the plain fallback renders both forms
        chat_template = None
        eos_token = "</s>"

    assert len(sft_rows(tmp_path / "c", Tok())) == 12 and len(dpo_rows(tmp_path / "e", Tok())) == 12


def _view(label, r, proxy, gold, **wr):
    from bonsynth.loop.report import RoundView

    g = {"gold_mean": gold}
    for key, (v, lo, hi) in wr.items():
        g[f"gold_win_rate_vs_{key}"], g[f"gold_win_rate_vs_{key}_ci95"] = v, [lo, hi]
    return RoundView(label=label, round=r, metrics={"reward_mean": proxy}, rewards=[], gold=g)


def test_verdict_says_when_gold_does_not_follow_the_proxy():
    from bonsynth.loop.report import gold_verdict

    base = _view("base", None, 0.0, 1.0)
    flat = [base, _view("round 0", 0, 0.5, 1.0, previous=(0.5, 0.4, 0.6), base=(0.5, 0.4, 0.6))]
    text = " ".join(gold_verdict(flat, None))
    assert "Gold does not improve while the proxy does" in text and "over-optimisation" in text
    worse = [base, _view("round 0", 0, 0.5, 0.2, previous=(0.3, 0.2, 0.4), base=(0.3, 0.2, 0.4))]
    text = " ".join(gold_verdict(worse, None))
    assert "gold got worse while the proxy improved" in text and "- round 0: the proxy rose" in text
    up = [base, _view("round 0", 0, 0.5, 2.0, previous=(0.8, 0.7, 0.9), base=(0.8, 0.7, 0.9), control=(0.7, 0.6, 0.8))]
    ctl = [base, _view("round 0", 0, 0.3, 1.5, base=(0.6, 0.5, 0.7))]
    text = " ".join(gold_verdict(up, ctl))
    assert "Gold improves with the proxy" in text and "over-optimisation" not in text.lower()
    assert "Selection helped" in text
    down = [base, _view("round 0", 0, -0.5, 1.0, previous=(0.5, 0.4, 0.6), base=(0.5, 0.4, 0.6))]
    assert "The proxy did not rise" in " ".join(gold_verdict(down, None))
    up[1].gold["gold_win_rate_vs_control_ci95"] = [0.45, 0.8]
    assert "did not measurably help" in " ".join(gold_verdict(up, ctl))


# ---------------------------------------------------------------------------------------------------- the loop


def _judge_scores(judge, run_dir: Path) -> dict[str, list[float]]:
    rows = _rows(run_dir / "candidates.jsonl")
    prompts = [r["prompt"] for r in rows for _ in r["candidates"]]
    texts = [c["text"] for r in rows for c in r["candidates"]]
    scores = iter(judge.score(prompts, texts).combined)
    return {r["id"]: [next(scores) for _ in r["candidates"]] for r in rows}


def _win(cur: dict, other: dict) -> list[float]:
    per = []
    for pid in sorted(set(cur) & set(other)):
        pairs = [(a > b) + 0.5 * (a == b) for a in cur[pid] for b in other[pid]]
        per.append(sum(pairs) / len(pairs))
    return per


@pytest.mark.slow
def test_loop_with_judge_and_random_control(tmp_path, tiny_tokenizer, tiny_policy_dir, tiny_rm_dir, prompts_file):
    from bonsynth.judge.estimator import bootstrap_ci
    from bonsynth.loop import run_loop
    from bonsynth.loop.gold import BOOTSTRAP
    from bonsynth.loop.sources import derive_seed
    from bonsynth.rm.ensemble import RewardEnsemble

    judge_dir = _share_rm(tiny_tokenizer, tmp_path / "judge")  # a different RM than the proxy
    m = SimpleNamespace(policy=tiny_policy_dir, rm=tiny_rm_dir, prompts=prompts_file)
    out = tmp_path / "loop"
    recipe = write_recipe(
        tmp_path / "r.yaml", m, out, rounds=2, prompts_per_round=4, control="random",
        generation={"n": 3, "max_new_tokens": 6, "batch_size": 4},
        update={"epochs": 1, "batch_size": 4, "max_length": 48},
        eval={"num_prompts": 4, "n": 3, "judge": [str(judge_dir)]},
    )
    summary = run_loop(recipe, show_progress=False)
    assert summary["rounds_complete"] == 2
    state = json.loads((out / "loop_state.json").read_text())
    for r in range(2):
        for stage in ("generate", "train", "control_train", "control_eval", "eval"):
            assert f"round_{r:03d}/{stage}" in state["done"]
    assert state["done"].index("round_000/control_eval") < state["done"].index("round_000/eval")

    judge = RewardEnsemble.load([str(judge_dir)], device="cpu")
    dirs = {"base": out / "baseline" / "eval"}
    for r in range(2):
        dirs[f"main{r}"] = out / f"round_{r:03d}" / "eval"
        dirs[f"control{r}"] = out / f"round_{r:03d}" / "control" / "eval"
    gold = {k: _judge_scores(judge, d) for k, d in dirs.items()}
    for k, d in dirs.items():  # gold.jsonl holds the judge's scores of every candidate, by prompt id
        on_disk = {row["id"]: row["gold"] for row in _rows(d / "gold.jsonl")}
        assert set(on_disk) == set(gold[k]), k
        for pid, scores in gold[k].items():
            assert on_disk[pid] == pytest.approx(scores, abs=1e-5), (k, pid)
        assert json.loads((d / "judge.json").read_text())["judge_is_proxy"] is False

    seed = derive_seed(0, "gold-bootstrap")

    def check(rec: dict, key: str, prev: str | None, extra: dict) -> None:
        g = rec["gold"]
        vals = [x for v in gold[key].values() for x in v]
        assert g["gold_mean"] == pytest.approx(sum(vals) / len(vals), abs=1e-5)
        assert g["gold_samples"] == 4 * 3 and g["gold_prompts"] == 4
        for name, other in (("previous", prev), ("base", "base" if prev else None), *extra.items()):
            if other is None:
                assert g[f"gold_win_rate_vs_{name}"] is None
                continue
            per = _win(gold[key], gold[other])
            assert g[f"gold_win_rate_vs_{name}"] == pytest.approx(sum(per) / len(per), abs=1e-6), (key, name)
            lo, hi = g[f"gold_win_rate_vs_{name}_ci95"]
            assert [lo, hi] == pytest.approx(list(bootstrap_ci(per, resamples=BOOTSTRAP, seed=seed)), abs=1e-6)

    check(json.loads((out / "baseline" / "metrics.json").read_text()), "base", None, {})
    for r in range(2):
        rd = out / f"round_{r:03d}"
        prev_main, prev_ctl = ("base", "base") if r == 0 else (f"main{r - 1}", f"control{r - 1}")
        check(json.loads((rd / "metrics.json").read_text()), f"main{r}", prev_main, {"control": f"control{r}"})
        ctl = json.loads((rd / "control" / "metrics.json").read_text())
        assert ctl["arm"] == "control"
        check(ctl, f"control{r}", prev_ctl, {})
        # The control arm trained on the seeded random candidate of each prompt, from its own previous policy.
        gen = {row["id"]: row for row in _rows(rd / "generate" / "candidates.jsonl")}
        sft = _rows(rd / "control" / "sft.jsonl")
        assert len(sft) == len(gen) == 4
        for row in sft:
            cands = gen[row["id"]]["candidates"]
            assert row["completion"] == cands[derive_seed(0, "control", r, row["id"]) % len(cands)]["text"]
        train = ctl["train"]
        assert train["num_examples"] == 4 and train["control"]["selection"] == "random"
        assert train["policy_in"] == (str(tiny_policy_dir) if r == 0 else "round_000/control/policy")
        assert (rd / "control" / "policy" / "model.safetensors").is_file()
    # The eval prompts and seeds are the same for both arms and every round.
    ids = [r["id"] for r in _rows(dirs["base"] / "candidates.jsonl")]
    assert all([r["id"] for r in _rows(d / "candidates.jsonl")] == ids for d in dirs.values())

    report = (out / "report.md").read_text()
    assert "## Gold judge (judge)" in report and "best-of-N vs control [95% CI]" in report
    assert "control gold mean" in report and "gold_vs_round.png" in report and "| round 1 |" in report
    assert any(s in report for s in ("Gold improves", "Gold does not improve", "gold got worse", "did not rise"))
    assert any(s in report for s in ("Selection helped", "Selection hurt", "did not measurably help"))
    assert "warning" not in report
    assert (out / "gold_vs_round.png").stat().st_size > 0 and (out / "round_001" / "gold_vs_round.png").is_file()
    assert summary["gold_mean_by_round"][0] == pytest.approx(
        json.loads((out / "baseline" / "metrics.json").read_text())["gold"]["gold_mean"])
    assert len(summary["control"]["gold_mean_by_round"]) == 3 and summary["judge_warnings"] == []

    # Stage-level resume: forget the last round's evals; the resumed loop redoes them to the same numbers.
    redone = ("round_001/metrics.json", "round_001/control/metrics.json", "round_001/eval/judge.json",
              "round_001/eval/gold.jsonl", "round_001/control/eval/judge.json")
    before = {p: (out / p).read_bytes() for p in redone}
    state["done"] = [s for s in state["done"] if s not in ("round_001/control_eval", "round_001/eval")]
    (out / "loop_state.json").write_text(json.dumps(state))
    (out / "round_001" / "eval" / "gold.jsonl").unlink()
    run_loop(recipe, resume=True, show_progress=False)
    for p, data in before.items():
        assert (out / p).read_bytes() == data, p


def test_report_without_control_and_with_a_warning(tmp_path):
    from bonsynth.loop.report import GOLD_PNG, write_report

    base = _view("base", None, 0.0, 1.0)
    base.rewards = [0.0, 0.1]
    r0 = _view("round 0", 0, 0.5, 1.0, previous=(0.5, 0.4, 0.6), base=(0.5, 0.4, 0.6))
    r0.rewards = [0.4, 0.6]
    for h in (base, r0):
        h.metrics.update({k: 0.0 for k in ("reward_median", "reward_p90", "best_of_n_mean", "bon_gain", "length_mean",
                                            "length_p90", "distinct_2")})
    text = write_report(tmp_path, [base, r0], title="t", warnings=["the judge X is the same model files as rewards"]
                        ).read_text()
    assert text.count("> **warning:** the judge X is the same model files") == 1
    assert "| round 0 | 0.5000 | 1.0000 | 0.500 [0.400, 0.600] | 0.500 [0.400, 0.600] |" in text
    assert "control" not in text and "Gold does not improve while the proxy does" in text
    assert (tmp_path / GOLD_PNG).stat().st_size > 0
    # Without a judge: no gold section, no gold plot (reports of existing loops are unchanged).
    for h in (base, r0):
        h.gold = {}
    text = write_report(tmp_path / "plain", [base, r0], title="t").read_text()
    assert "Gold judge" not in text and not (tmp_path / "plain" / GOLD_PNG).exists()

    # A control arm without a judge: compared under the proxy only, and the report says so.
    ctl = _view("round 0", 0, 0.25, None)
    text = write_report(tmp_path / "ctl", [base, r0], title="t", control=[base, ctl]).read_text()
    assert "## Control arm (random candidates)" in text and "| round 0 | 0.5000 | 0.2500 |" in text
    assert "set `eval.judge`" in text


@pytest.mark.slow
def test_judge_that_is_a_copy_of_the_proxy_is_warned_about(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts_file):
    """Through the CLI: a copied RM directory (other path, same weights) as judge is named on stderr and in the
    report, and its gold equals the proxy."""

    copy = shutil.copytree(tiny_rm_dir, tmp_path / "same-rm")
    m = SimpleNamespace(policy=tiny_policy_dir, rm=tiny_rm_dir, prompts=prompts_file)
    out = tmp_path / "loop"
    recipe = write_recipe(tmp_path / "r.yaml", m, out, rounds=1, prompts_per_round=2,
                          generation={"n": 2, "max_new_tokens": 4, "batch_size": 2},
                          update={"epochs": 1, "batch_size": 2, "max_length": 32},
                          eval={"num_prompts": 2, "n": 2, "judge": str(copy)})
    from click.testing import CliRunner

    from bonsynth.cli import cli

    result = CliRunner().invoke(cli, ["loop", str(recipe), "--quiet"])
    err = result.stderr
    assert result.exit_code == 0, err
    assert f"warning: the judge {copy} is the same model files as rewards ({tiny_rm_dir})" in err
    assert f"> **warning:** the judge {copy} is the same model files" in (out / "report.md").read_text()
    assert json.loads((out / "loop_summary.json").read_text())["judge_warnings"]
    for row, g in zip(_rows(out / "round_000" / "eval" / "candidates.jsonl"),
                      _rows(out / "round_000" / "eval" / "gold.jsonl"), strict=True):
        assert g["gold"] == pytest.approx([c["reward"] for c in row["candidates"]], abs=1e-5)
