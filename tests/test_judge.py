"""`bonsynth judge`: the exact best-of-n estimator, the bootstrap CI, and the command end to end."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bonsynth.judge import estimator


def _brute(proxy, gold, n):
    """Mean over every size-n subset: (proxy of the proxy's pick, gold of it, best gold), ties as selection breaks them."""
    subsets = list(itertools.combinations(range(len(proxy)), n))
    acc = np.zeros(3)
    for s in subsets:
        pick = max(s, key=lambda i: (proxy[i], -i))  # selection: reward desc, index asc
        acc += (proxy[pick], gold[pick], max(gold[i] for i in s))
    return acc / len(subsets)


@pytest.mark.parametrize("ties", [False, True])
def test_exact_estimator_equals_brute_force_over_all_subsets(ties):
    rng = np.random.default_rng(0)
    for _ in range(60):
        size = int(rng.integers(1, 9))
        if ties:  # few distinct values: many proxy ties (gold differs among them, so the tie-break matters)
            proxy = rng.integers(0, 3, size).astype(float).tolist()
            gold = rng.integers(0, 4, size).astype(float).tolist()
        else:
            proxy, gold = rng.normal(size=size).tolist(), rng.normal(size=size).tolist()
        for n in range(1, size + 1):
            assert estimator.best_of_n(proxy, gold, n) == pytest.approx(tuple(_brute(proxy, gold, n)), abs=1e-12)


def test_tie_break_matches_selection():
    from bonsynth.select.selection import SelectionConfig, select_candidates

    rng = np.random.default_rng(1)
    for _ in range(50):
        proxy = rng.integers(0, 3, 6).astype(float).tolist()
        sel = select_candidates(["t"] * 6, proxy, [1] * 6, SelectionConfig())
        assert estimator.proxy_pick(proxy) == sel.selected[0]
        gold = rng.normal(size=6).tolist()
        assert estimator.best_of_n(proxy, gold, 6)[1] == gold[sel.selected[0]]


def test_weights_are_exact_and_fast_for_large_n():
    w = estimator.bon_weights(256, 128)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert w[-1] == pytest.approx(128 / 256)  # the top rank is in the subset with probability n/N
    assert estimator.n_grid(64) == [1, 2, 4, 8, 16, 32, 64]
    assert estimator.n_grid(6) == [1, 2, 4, 6]


def test_win_rate_and_kendall():
    assert estimator.win_rate_vs_random([3, 2, 1], [3, 2, 1]) == pytest.approx((2 + 0.5) / 3)
    assert estimator.win_rate_vs_random([1, 2, 3], [3, 2, 1]) == pytest.approx(0.5 / 3)
    assert estimator.kendall_tau_b([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert estimator.kendall_tau_b([1, 1, 1], [1, 2, 3]) is None
    rng = np.random.default_rng(2)
    for _ in range(100):
        size = int(rng.integers(2, 12))
        x, y = rng.integers(0, 3, size), rng.integers(0, 3, size)
        want = _tau_b(x, y)
        got = estimator.kendall_tau_b(x, y)
        assert got is None if want is None else got == pytest.approx(want, abs=1e-12)


def test_kendall_equals_scipy_tau_b():
    kendalltau = pytest.importorskip("scipy.stats").kendalltau
    rng = np.random.default_rng(4)
    for _ in range(100):
        x, y = rng.integers(0, 4, 10), rng.normal(size=10).round(1)
        assert estimator.kendall_tau_b(x, y) == pytest.approx(kendalltau(x, y, variant="b").statistic, abs=1e-12)


def _tau_b(x, y):
    """Kendall's tau-b by its definition, pair by pair (None when a side is constant)."""
    conc = disc = tx = ty = pairs = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            pairs += 1
            a, b = np.sign(x[j] - x[i]), np.sign(y[j] - y[i])
            tx += a == 0
            ty += b == 0
            conc += a * b > 0
            disc += a * b < 0
    denom = math.sqrt((pairs - tx) * (pairs - ty))
    return (conc - disc) / denom if denom else None


def test_bootstrap_ci_covers_a_known_win_rate():
    """Each prompt: with prob q the proxy equals gold (win rate 1 - 0.5/N), else it is independent (0.5)."""
    size, q, prompts = 8, 0.4, 60
    truth = q * (1 - 0.5 / size) + (1 - q) * 0.5
    rng = np.random.default_rng(3)
    covered = 0
    for d in range(200):
        wins = []
        for _ in range(prompts):
            gold = rng.normal(size=size)
            proxy = gold if rng.random() < q else rng.normal(size=size)
            wins.append(estimator.win_rate_vs_random(proxy, gold))
        lo, hi = estimator.bootstrap_ci(wins, resamples=1000, seed=d)
        covered += lo <= truth <= hi
    assert covered / 200 >= 0.88


def test_recommended_n_and_verdict():
    def rows(golds, se=0.01):
        return [{"n": 2 ** k, "gold_mean": g, "gold_se": se, "gold_gain": g - golds[0], "gold_gain_se": se,
                 "kl_bound": 0.0} for k, g in enumerate(golds)]

    rising_then_falling = rows([0.0, 0.5, 0.8, 0.805, 0.6])
    assert estimator.recommended_n(rising_then_falling) == 4
    text = estimator.verdict(rising_then_falling, "J", 4)
    assert "helps" in text and "n = 4 on" in text and "falls" in text
    flat = rows([0.0, 0.001, -0.002])
    assert "does not help" in estimator.verdict(flat, "J", estimator.recommended_n(flat))
    worse = rows([0.0, -0.5, -1.0])
    assert "significantly worse" in estimator.verdict(worse, "J", 1)


# ---- end to end ---------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bonsynth", *args], capture_output=True, text=True, timeout=300)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_policy_dir, tiny_rm_dir):
    from tests.conftest import corpus, write_jsonl

    tmp = tmp_path_factory.mktemp("judge")
    prompts = write_jsonl(tmp / "p.jsonl", [{"id": f"q{i}", "prompt": t} for i, t in enumerate(corpus(10, seed=9))])
    out = tmp / "run"
    r = _cli("generate", "--policy", str(tiny_policy_dir), "--reward", str(tiny_rm_dir), "--prompts", str(prompts),
             "--out", str(out), "--n", "6", "--backend", "hf", "--device", "cpu", "--max-new-tokens", "8",
             "--quiet", "--seed", "3")
    assert r.returncode == 0, r.stderr
    return out


def test_recommended_n_uses_the_paired_step_error_not_the_spread_between_prompts():
    """Prompts differ far more from each other than best-of-n moves any one of them, so each level's standard
    error (the spread between prompts) can exceed every step while the paired steps are clear: the rule must
    judge a step by its paired error. The paired step errors equal a per-prompt brute force."""
    rows = [{"n": 2 ** k, "gold_mean": g, "gold_se": 0.7, "gold_step_se": None if k == 0 else se}
            for k, (g, se) in enumerate([(0.20, None), (0.54, 0.01), (0.73, 0.01), (0.735, 0.01)])]
    assert estimator.recommended_n(rows) == 4
    old = [{k: v for k, v in r.items() if k != "gold_step_se"} for r in rows]  # reports written before the field
    assert estimator.recommended_n(old) == 1

    rng = np.random.default_rng(1)
    prompts = []
    for _ in range(30):
        proxy = rng.normal(size=8)
        gold = rng.normal(scale=5.0) + 0.5 * proxy + rng.normal(scale=0.3, size=8)
        prompts.append((proxy.tolist(), gold.tolist()))
    curve = estimator.curve(prompts, 8)
    assert curve[0]["gold_step_se"] is None
    for k in (1, 2, 3):
        per_prompt = [_brute(p, g, curve[k]["n"])[1] - _brute(p, g, curve[k - 1]["n"])[1] for p, g in prompts]
        assert curve[k]["gold_step_se"] == pytest.approx(np.std(per_prompt, ddof=1) / math.sqrt(len(per_prompt)))
        assert curve[k]["gold_step_se"] < curve[k]["gold_se"] / 3
    assert estimator.recommended_n(curve) > 1


def test_judge_cli_recomputes_from_candidates(run_dir, tmp_path, tiny_rm2_dir):
    from bonsynth.rm.ensemble import RewardEnsemble

    out = tmp_path / "rep"
    r = _cli("judge", str(run_dir), "--judge", str(tiny_rm2_dir), "--out", str(out), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["judge.json", "judge.md", "judge.png"]
    rep = json.loads((out / "judge.json").read_text())
    assert (out / "judge.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rep["verdict"] in (out / "judge.md").read_text()

    # Independently: score every candidate with the judge, then brute-force best-of-n over subsets.
    rows = _rows(run_dir / "candidates.jsonl")
    ens = RewardEnsemble.load([str(tiny_rm2_dir)], device="cpu")
    gold = ens.score([r["prompt"] for r in rows for _ in r["candidates"]],
                     [c["text"] for r in rows for c in r["candidates"]]).combined
    per, k = [], 0
    for row in rows:
        m = len(row["candidates"])
        per.append(([c["reward"] for c in row["candidates"]], gold[k : k + m]))
        k += m
    assert rep["N"] == 6 and rep["counts"]["prompts_used"] == 10 and rep["counts"]["candidates_used"] == 60
    assert [c["n"] for c in rep["curve"]] == [1, 2, 4, 6]
    for c in rep["curve"]:
        brute = np.mean([_brute(p, g, c["n"]) for p, g in per], axis=0)
        assert (c["proxy_mean"], c["gold_mean"], c["oracle_gold_mean"]) == pytest.approx(tuple(brute), abs=1e-5)
        per_prompt = [_brute(p, g, c["n"])[1] for p, g in per]
        assert c["gold_se"] == pytest.approx(np.std(per_prompt, ddof=1) / math.sqrt(10), abs=1e-5)
        assert c["kl_bound"] == pytest.approx(math.log(c["n"]) - (c["n"] - 1) / c["n"])
    # The n = N proxy mean is the run's own mean selected reward; n = 1 its mean over all candidates.
    man = json.loads((run_dir / "manifest.json").read_text())
    assert rep["curve"][-1]["proxy_mean"] == pytest.approx(man["summary"]["mean_reward_selected"], abs=1e-9)
    assert rep["curve"][0]["proxy_mean"] == pytest.approx(man["summary"]["mean_reward_all"], abs=1e-9)
    wins = []
    for (_p, g), row in zip(per, rows, strict=True):
        best = g[row["selected"][0]]
        wins.append(np.mean([1.0 if best > x else 0.5 if best == x else 0.0 for x in g]))
    assert rep["gold_win_rate_vs_random"] == pytest.approx(np.mean(wins), abs=1e-6)
    lo, hi = rep["gold_win_rate_ci95"]
    assert lo <= rep["gold_win_rate_vs_random"] <= hi
    taus = [t for t in (_tau_b(p, g) for p, g in per) if t is not None]
    assert rep["rank_agreement"] == pytest.approx(np.mean(taus), abs=1e-6)
    assert rep["rank_agreement_prompts"] == len(taus)
    assert rep["recommended_n"] in (1, 2, 4, 6) and rep["judge_is_proxy"] is False and not rep["warnings"]


def test_judge_same_as_proxy_warns_and_gold_equals_proxy(run_dir, tmp_path, tiny_rm_dir):
    out = tmp_path / "same"
    r = _cli("judge", str(run_dir), "--judge", str(tiny_rm_dir), "--out", str(out), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "selecting RM" in r.stderr
    rep = json.loads((out / "judge.json").read_text())
    assert rep["judge_is_proxy"] is True
    for c in rep["curve"]:
        assert c["gold_mean"] == pytest.approx(c["proxy_mean"], abs=1e-5)
    assert "selecting RM" in (out / "judge.md").read_text()


def test_judge_two_judges_weighted_like_generate(run_dir, tmp_path, tiny_rm_dir, tiny_rm2_dir):
    from bonsynth.rm.ensemble import RewardEnsemble

    out = tmp_path / "two"
    r = _cli("judge", str(run_dir), "--judge", str(tiny_rm_dir), "--judge", str(tiny_rm2_dir),
             "--judge-weights", "0.7,0.3", "--out", str(out), "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep == json.loads((out / "judge.json").read_text())
    rows = _rows(run_dir / "candidates.jsonl")
    ens = RewardEnsemble.load([str(tiny_rm_dir), str(tiny_rm2_dir)], [0.7, 0.3], device="cpu")
    gold = ens.score([r["prompt"] for r in rows for _ in r["candidates"]],
                     [c["text"] for r in rows for c in r["candidates"]]).combined
    assert rep["curve"][0]["gold_mean"] == pytest.approx(float(np.mean(gold)), abs=1e-5)


def test_judge_bad_run_dir_one_line_exit_2_nothing_written(run_dir, tmp_path, tiny_rm2_dir):
    import shutil

    def check(d: Path, *needles: str) -> None:
        before = sorted(p.name for p in d.iterdir()) if d.is_dir() else None
        r = _cli("judge", str(d), "--judge", str(tiny_rm2_dir), "--device", "cpu")
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        for s in needles:
            assert s in r.stderr, r.stderr
        after = sorted(p.name for p in d.iterdir()) if d.is_dir() else None
        assert before == after

    check(tmp_path / "missing", "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    check(empty, "candidates.jsonl")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(run_dir, corrupt)
    lines = (corrupt / "candidates.jsonl").read_text().splitlines(keepends=True)
    lines[3] = lines[3][:40] + "\n"
    (corrupt / "candidates.jsonl").write_text("".join(lines))
    check(corrupt, "candidates.jsonl:4")
    incomplete = tmp_path / "incomplete"
    shutil.copytree(run_dir, incomplete)
    state = json.loads((incomplete / "state.json").read_text())
    state["complete"] = False
    (incomplete / "state.json").write_text(json.dumps(state))
    (incomplete / "manifest.json").unlink()
    check(incomplete, "not finished")
    r = _cli("judge", str(run_dir), "--judge", str(tmp_path / "nojudge"), "--device", "cpu")
    assert r.returncode == 2 and "nojudge" in r.stderr and not (run_dir / "judge.json").exists()


def test_judge_leaves_out_null_rewards_and_skipped_prompts(run_dir, tmp_path, tiny_rm2_dir):
    import shutil

    d = tmp_path / "nulls"
    shutil.copytree(run_dir, d)
    rows = _rows(d / "candidates.jsonl")
    rows[0]["candidates"][2]["reward"] = None
    rows[1]["skipped"], rows[1]["candidates"], rows[1]["selected"] = True, [], []
    (d / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = _cli("judge", str(d), "--judge", str(tiny_rm2_dir), "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)["counts"]
    assert (c["null_proxy_reward"], c["prompts_skipped"], c["prompts_used"], c["candidates_used"]) == (1, 1, 9, 53)


# ---- LLM judge over the OpenAI-compatible backend ------------------------------------------------------------

SECRET = "sk-judge-DO-NOT-LEAK-51c0e2"


@pytest.fixture(scope="module")
def llm_server(tiny_tokenizer):
    from openai_gpt2_server import GPT2OpenAIServer

    from bonsynth.demo.models import tiny_causal_lm

    srv = GPT2OpenAIServer(tiny_causal_lm(tiny_tokenizer, seed=1), tiny_tokenizer, model_name="judge-lm").start()
    yield srv
    srv.stop()


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def _canned_score(response: str) -> str:
    words = len(response.split())
    return "I would rather not say." if words % 5 == 0 else f"Score: {words % 10 + 1}"


def _canned_winner(a: str, b: str) -> str:
    if len(a) == len(b):
        return "hmm, hard to say"
    return "Winner: A" if len(a) > len(b) else "Winner: B"


def _invoke(args, monkeypatch):
    from click.testing import CliRunner

    from bonsynth.cli import cli

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_llm_judge_pointwise_counts_unparsable_and_keeps_the_key_secret(run_dir, tmp_path, llm_server, monkeypatch):
    seen = []

    def answer(body):
        content = body["messages"][-1]["content"]
        seen.append(content)
        return _canned_score(_between(content, "[Response]\n", "\n\nAnswer with"))

    llm_server.reset()
    llm_server.answer = answer
    llm_server.faults.append({"status": 503, "body": {"error": {"message": "busy {auth}"}}})  # retried
    out = tmp_path / "llm"
    r = _invoke(["judge", str(run_dir), "--judge", "openai:judge-lm", "--base-url", llm_server.base_url,
                 "--out", str(out), "--concurrency", "4"], monkeypatch)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "judge.json").read_text())
    rows = _rows(run_dir / "candidates.jsonl")
    expected_unparsable = sum(len(c["text"].split()) % 5 == 0 for row in rows for c in row["candidates"])
    assert rep["counts"]["unparsable"] == expected_unparsable > 0
    assert rep["counts"]["candidates_used"] == 60 - expected_unparsable
    per = []
    for row in rows:
        kept = [(c["reward"], len(c["text"].split()) % 10 + 1) for c in row["candidates"]
                if len(c["text"].split()) % 5]
        if kept:
            per.append(([p for p, _ in kept], [float(g) for _, g in kept]))
    for c in rep["curve"]:
        brute = np.mean([_brute(p, g, min(c["n"], len(p))) for p, g in per], axis=0)
        assert (c["proxy_mean"], c["gold_mean"], c["oracle_gold_mean"]) == pytest.approx(tuple(brute), abs=1e-9)
    # The default template was filled with the prompt and the candidate; the requests were sent with the key.
    assert any(rows[0]["candidates"][0]["text"] in s and rows[0]["prompt"] in s for s in seen)
    assert all(q["authorization"] == f"Bearer {SECRET}" for q in llm_server.requests)
    assert len(llm_server.requests) == 60 + 1  # one request per candidate, plus the retried 503
    for text in (r.output, (out / "judge.json").read_text(), (out / "judge.md").read_text()):
        assert SECRET not in text
    assert "unparsable" in r.output


def test_llm_judge_pairwise_and_custom_template(run_dir, tmp_path, llm_server, monkeypatch):
    template = tmp_path / "pair.txt"
    template.write_text("Q: {prompt}\n<<A>>{response_a}<</A>>\n<<B>>{response_b}<</B>>\nWho wins?\n")

    def answer(body):
        content = body["messages"][-1]["content"]
        return _canned_winner(_between(content, "<<A>>", "<</A>>"), _between(content, "<<B>>", "<</B>>"))

    llm_server.reset()
    llm_server.answer = answer
    out = tmp_path / "pair"
    r = _invoke(["judge", str(run_dir), "--judge", "openai:judge-lm", "--base-url", llm_server.base_url,
                 "--judge-mode", "pairwise", "--judge-prompt", str(template), "--out", str(out)], monkeypatch)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "judge.json").read_text())
    rows = _rows(run_dir / "candidates.jsonl")
    wins, unparsable = [], 0
    for row in rows:
        pick = row["selected"][0]
        best = row["candidates"][pick]["text"]
        got = []
        for j, c in enumerate(row["candidates"]):
            if j == pick:
                continue
            if len(c["text"]) == len(best):
                unparsable += 1
            else:
                got.append(1.0 if len(best) > len(c["text"]) else 0.0)
        wins.append((0.5 + sum(got)) / (1 + len(got)))
    assert rep["curve"] is None and rep["counts"]["comparisons"] == 50 == len(llm_server.requests)
    assert rep["counts"]["unparsable"] == unparsable
    assert rep["gold_win_rate_vs_random"] == pytest.approx(np.mean(wins))
    assert (out / "judge.png").read_bytes()[:4] == b"\x89PNG"


def test_llm_judge_config_errors(run_dir, tmp_path, tiny_rm2_dir, monkeypatch):
    bad = tmp_path / "bad.txt"
    bad.write_text("no slots here")
    cases = [
        (["--judge", "openai:m", "--judge-prompt", str(bad)], "{response}"),
        (["--judge", "openai:m", "--judge-prompt", str(tmp_path / "none.txt")], "none.txt"),
        (["--judge", "openai:m", "--judge", str(tiny_rm2_dir)], "only --judge"),
        (["--judge", str(tiny_rm2_dir), "--judge-mode", "pairwise"], "--judge-mode"),
    ]
    from click.testing import CliRunner

    from bonsynth.cli import cli
    from bonsynth.errors import ConfigError

    for args, needle in cases:
        r = CliRunner().invoke(cli, ["judge", str(run_dir), *args, "--base-url", "http://127.0.0.1:9/v1"])
        assert isinstance(r.exception, ConfigError) and needle in str(r.exception), (args, r.exception)
    assert not (run_dir / "judge.json").exists()


def test_parsers_never_guess():
    from bonsynth.judge.llm import fill, parse_score, parse_winner

    assert parse_score("Score: 7") == 7.0 and parse_score("score = 10/10.") == 10.0 and parse_score(" 3 ") == 3.0
    assert parse_score("**Score:** 8\nbecause...") == 8.0
    for bad in ("Score: 11", "Score: 0", "I give it a 7 maybe", "", "Score: seven", "7 or 8"):
        assert parse_score(bad) is None, bad
    assert parse_winner("Winner: B") == "b" and parse_winner("winner: Tie.") == "tie"
    assert parse_winner("A is better") is None and parse_winner("Winner: C") is None
    assert fill("{prompt}|{response}", prompt="{response}", response="x") == "{response}|x"


# ---- generate --judge ----------------------------------------------------------------------------------------


def test_generate_with_judge_writes_the_report_and_changes_nothing_else(run_dir, tmp_path, tiny_policy_dir,
                                                                        tiny_rm_dir, tiny_rm2_dir):
    man = json.loads((run_dir / "manifest.json").read_text())
    out = tmp_path / "with_judge"
    common = ["generate", "--policy", str(tiny_policy_dir), "--reward", str(tiny_rm_dir),
              "--prompts", man["config"]["prompts"], "--n", "6", "--backend", "hf", "--device", "cpu",
              "--max-new-tokens", "8", "--quiet", "--seed", "3"]
    # A judge that does not exist fails before anything runs or is written.
    r = _cli(*common, "--out", str(out), "--judge", str(tmp_path / "nojudge"))
    assert r.returncode == 2 and "nojudge" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()
    r = _cli(*common, "--out", str(out), "--judge", str(tiny_rm2_dir))
    assert r.returncode == 0, r.stderr
    assert "gold judge" in r.stdout
    # Same data files and the same resume fingerprint as the run without a judge.
    for name in ("candidates.jsonl", "sft.jsonl", "dpo.jsonl"):
        assert (out / name).read_bytes() == (run_dir / name).read_bytes()
    state = json.loads((out / "state.json").read_text())
    assert state["config_fingerprint"] == json.loads((run_dir / "state.json").read_text())["config_fingerprint"]
    # The report equals `bonsynth judge` on the run.
    sep = tmp_path / "separate"
    r = _cli("judge", str(run_dir), "--judge", str(tiny_rm2_dir), "--out", str(sep), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    a, b = (json.loads((d / "judge.json").read_text()) for d in (out, sep))
    for rep in (a, b):
        rep.pop("timings"), rep.pop("run_dir")
        rep["judge"].pop("models")  # how the judge ran (device lists) may differ in wording
    for ca, cb in zip(a.pop("curve"), b.pop("curve"), strict=True):
        assert ca == pytest.approx(cb, abs=1e-6)
    assert a == b


def test_report_is_written_all_or_nothing(tmp_path, monkeypatch):
    from bonsynth.judge import report as report_mod
    from bonsynth.judge.run import JudgeConfig, build_report

    rng = np.random.default_rng(5)
    data = [(rng.normal(size=4).tolist(), rng.normal(size=4).tolist()) for _ in range(20)]
    counts = {"prompts": 20, "prompts_used": 20}
    rep = build_report(JudgeConfig(run_dir=str(tmp_path), judges=["j"], bootstrap=200), {"config": {"n": 4}},
                       data, counts, "j", [], timings={}, n_max=4)
    out = tmp_path / "rep"

    def broken(report, path):
        path.write_bytes(b"half a png")
        raise OSError("disk gone")

    monkeypatch.setattr(report_mod, "plot", broken)
    with pytest.raises(OSError):
        report_mod.write_report(rep, out)
    assert list(out.iterdir()) == []
    monkeypatch.undo()
    paths = report_mod.write_report(rep, out)
    assert sorted(p.name for p in out.iterdir()) == ["judge.json", "judge.md", "judge.png"]
    assert json.loads(paths["json"].read_text()) == rep
    (tmp_path / "afile").write_text("x")
    from bonsynth.errors import ConfigError

    with pytest.raises(ConfigError, match="not a directory"):
        report_mod.write_report(rep, tmp_path / "afile")
