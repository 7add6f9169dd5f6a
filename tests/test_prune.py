"""Speculative rejection (`--prune-at/--prune-keep`): schedule, exact continuation, outputs, resume, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bonsynth.generate.backends.base import Continuation, SamplingConfig
from bonsynth.generate.pipeline import GenerateConfig, run_generate
from bonsynth.generate.prune import PruneConfig, auto_point, kept_count
from tests.conftest import corpus, run_bonsynth, sigkill_when, two_segments, write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FILES = ("candidates.jsonl", "sft.jsonl", "dpo.jsonl")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _cfg(policy, rm, prompts, out, **kw) -> GenerateConfig:
    base = dict(policy=str(policy), rewards=[str(rm)], prompts=str(prompts), out=str(out), n=6, backend="hf",
                max_new_tokens=16, seed=7, batch_size=5, device="cpu", show_progress=False, write_pairs=True)
    base.update(kw)
    return GenerateConfig(**base)


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------ schedule


def test_kept_count_is_ceil_of_the_share_at_least_one():
    assert [kept_count(0.25, m) for m in (1, 2, 3, 4, 5, 8, 16)] == [1, 1, 1, 1, 2, 2, 4]
    assert kept_count(0.3, 10) == 3  # not 4 from 0.3 * 10 = 3.0000000000000004
    assert kept_count(0.01, 7) == 1 and kept_count(1.0, 7) == 7 and kept_count(0.5, 0) == 0


def test_prune_keep_alone_prunes_once_at_an_eighth_of_the_reply():
    assert PruneConfig.resolve(None, 0.5, 128) == PruneConfig(points=(16,), keep=0.5)
    assert auto_point(5) == 1 and PruneConfig.resolve(None, None, 128) is None
    assert PruneConfig.resolve([4, 9], 0.25, 16) == PruneConfig(points=(4, 9), keep=0.25)


@pytest.mark.parametrize(("args", "message"), [
    (["--prune-at", "8"], "--prune-at needs --prune-keep"),
    (["--prune-at", "8,x", "--prune-keep", "0.5"], "--prune-at must be comma-separated token counts"),
    (["--prune-at", "8,4", "--prune-keep", "0.5"], "--prune-at must be strictly increasing"),
    (["--prune-at", "0", "--prune-keep", "0.5"], "--prune-at must be positive token counts"),
    (["--prune-at", "16", "--prune-keep", "0.5"], "--prune-at 16 is not below --max-new-tokens 16"),
    (["--prune-at", ",", "--prune-keep", "0.5"], "--prune-at needs at least one token count"),
    (["--prune-keep", "0"], "--prune-keep must be a share in (0, 1]"),
    (["--prune-keep", "1.5"], "--prune-keep must be a share in (0, 1]"),
    (["--prune-keep", "half"], "--prune-keep must be a number"),
    (["--prune-keep", "0.5", "--max-new-tokens", "1"], "--prune-keep: --max-new-tokens 1 leaves no room"),
])
def test_bad_prune_flags_are_one_line_errors_naming_the_flag(tmp_path, tiny_policy_dir, tiny_rm_dir,
                                                             prompts_file, args, message):
    out = tmp_path / "out"
    argv = ["generate", "--policy", str(tiny_policy_dir), "--reward", str(tiny_rm_dir), "--prompts",
            str(prompts_file), "--out", str(out), "--backend", "hf", "--device", "cpu", "--quiet"]
    if "--max-new-tokens" not in args:
        argv += ["--max-new-tokens", "16"]
    code, _, err = run_bonsynth([*argv, *args])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ outputs


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, tiny_policy_dir, tiny_rm_dir):
    """One pruned run on 12 prompts (two points), shared by the checks below."""
    tmp = tmp_path_factory.mktemp("pruned")
    prompts = write_jsonl(tmp / "p.jsonl", [{"id": f"q{i}", "prompt": t} for i, t in enumerate(corpus(12, seed=5))])
    out = tmp / "out"
    manifest = run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts, out, prune_at=[4, 9], prune_keep=0.5))
    return prompts, out, manifest


def test_pruning_keeps_ceil_share_of_the_running_candidates_at_each_point(pruned_run):
    _, out, manifest = pruned_run
    rows = _rows(out / "candidates.jsonl")
    pruned = 0
    for row in rows:
        cands = row["candidates"]
        assert len(cands) == 6  # pruned candidates are written too
        for point in (4, 9):
            # running at the point: pruned there or later, or finished after it
            alive = [c for c in cands if (c["pruned_at"] or 0) >= point
                     or (c["pruned_at"] is None and c["num_tokens"] > point)]
            at = [c for c in cands if c["pruned_at"] == point]
            assert len(alive) - len(at) == kept_count(0.5, len(alive)), (row["id"], point)
            for c in at:
                assert c["finish_reason"] == "pruned" and c["num_tokens"] == point and c["reward"] is not None
            pruned += len(at)
        finished = [i for i, c in enumerate(cands) if c["pruned_at"] is None]
        assert row["selected"] and set(row["selected"]) <= set(finished)  # selection: finished candidates only
        assert not row["pair"] or set(row["pair"]) <= set(finished)
    assert pruned == manifest["summary"]["pruned"] > 0


def test_pruned_at_a_point_are_the_lowest_partial_rewards(pruned_run, tiny_rm_dir):
    """Re-score every candidate running at point 4 as it stood there: the pruned ones are the worst."""
    from bonsynth.rm.model import RewardModel

    _, out, _ = pruned_run
    rm = RewardModel.load(str(tiny_rm_dir), device="cpu")
    rows = _rows(out / "candidates.jsonl")
    pruned_4 = [(row, c) for row in rows for c in row["candidates"] if c["pruned_at"] == 4]
    got = rm.score([(row["prompt"], c["text"]) for row, c in pruned_4])
    assert [c["reward"] for _, c in pruned_4] == pytest.approx(got, abs=1e-5)


def test_generated_tokens_counted_exactly(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts_file):
    """The summary's count equals the tokens the backend really returned, counted by a spy on `extend`."""
    from bonsynth.generate.backends import make_backend

    backend = make_backend("hf", str(tiny_policy_dir), device="cpu")
    new_tokens = []
    real_extend = backend.extend

    def spy(prepared, items, sampling, max_new_tokens):
        exts = real_extend(prepared, items, sampling, max_new_tokens)
        new_tokens.extend(len(e.tokens) - len(it.tokens) for it, e in zip(items, exts, strict=True))
        assert all(len(e.tokens) == e.num_tokens for e in exts)
        return exts

    backend.extend = spy
    out = tmp_path / "out"
    manifest = run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts_file, out, prune_at=[3, 8], prune_keep=0.34),
                            backend=backend)
    s = manifest["summary"]
    assert s["generated_tokens"] == sum(new_tokens)
    rows = _rows(out / "candidates.jsonl")
    assert s["generated_tokens"] == sum(c["num_tokens"] for r in rows for c in r["candidates"])
    assert s["pruned"] == sum(c["pruned_at"] is not None for r in rows for c in r["candidates"]) > 0
    expected = math.fsum(6 * sum(f) / len(f) for r in rows
                         if (f := [c["num_tokens"] for c in r["candidates"] if c["pruned_at"] is None]))
    assert s["generated_tokens_without_pruning"] == pytest.approx(expected)
    assert s["generated_tokens"] < s["generated_tokens_without_pruning"]
    assert manifest["counts"]["finish_reasons"]["pruned"] == s["pruned"]
    assert manifest["config"]["prune_at"] == [3, 8] and manifest["config"]["prune_keep"] == 0.34


def test_same_outputs_whatever_the_batch_size(pruned_run, tmp_path, tiny_policy_dir, tiny_rm_dir):
    prompts, ref, _ = pruned_run
    out = tmp_path / "b2"
    run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts, out, prune_at=[4, 9], prune_keep=0.5, batch_size=2,
                      backend_options={"batch_size": 1}))
    # as for plain best-of-N: the same texts, token counts and prune points; rewards up to the RM's float
    # rounding under another scoring batch
    a, b = _rows(ref / "candidates.jsonl"), _rows(out / "candidates.jsonl")
    def shape(rows):
        return [[(c["text"], c["num_tokens"], c["pruned_at"], c["finish_reason"]) for c in r["candidates"]]
                for r in rows]
    assert shape(a) == shape(b)
    for ra, rb in zip(a, b, strict=True):
        assert [c["reward"] for c in ra["candidates"]] == pytest.approx([c["reward"] for c in rb["candidates"]],
                                                                         abs=1e-5)
        assert ra["selected"] == rb["selected"]


# Fingerprint of `GenerateConfig(policy="p", rewards=["r"], prompts="x.jsonl", out="o")` on main before pruning
# (commit a1507c4): a run made then still resumes. The manifest's config keys are the fields' names: the one
# field renamed since (long_prompt -> long_prompts, the name of its flag and recipe key) keeps its old name in
# the fingerprint.
FINGERPRINT_BEFORE = "8e56d64df44cb061"
CONFIG_KEYS_BEFORE = {
    "policy", "rewards", "prompts", "out", "n", "reward_weights", "backend", "temperature", "top_p", "max_new_tokens",
    "seed", "stop", "long_prompts", "select", "write_pairs", "min_reward", "min_margin", "dedup", "length_normalize",
    "batch_size", "device", "dtype", "prompt_format", "limit", "reward_engine", "shard", "backend_options",
    "reward_dtype", "prefix_sharing", "trust_remote_code", "allow_unsafe_weights", "max_model_len", "enforce_eager",
    "max_nonfinite", "skip_invalid",
}
CANDIDATE_KEYS_BEFORE = {"index", "text", "reward", "rewards", "finish_reason", "num_tokens", "duplicate"}


def test_pruning_off_writes_what_it_wrote_before(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts_file):
    """No prune flags: the plain path, the same fingerprint, manifest config, summary and candidate rows as before
    pruning existed. (The files were also checked byte for byte against main's code on one machine; the
    existing tests of test_generate.py run unchanged.)"""
    assert GenerateConfig(policy="p", rewards=["r"], prompts="x.jsonl", out="o").fingerprint() == FINGERPRINT_BEFORE
    out = tmp_path / "plain"
    manifest = run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts_file, out))
    assert set(manifest["config"]) == CONFIG_KEYS_BEFORE
    assert not {"pruned", "generated_tokens", "generated_tokens_without_pruning"} & set(manifest["summary"])
    assert "pruned" not in manifest["counts"]["finish_reasons"]
    assert all(set(c) == CANDIDATE_KEYS_BEFORE for r in _rows(out / "candidates.jsonl") for c in r["candidates"])
    # keep=1 prunes nothing: the same selection machinery, every candidate finished, each row says so
    out1 = tmp_path / "keep1"
    m1 = run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts_file, out1, prune_keep=1.0))
    assert m1["summary"]["pruned"] == 0
    assert all(c["pruned_at"] is None for r in _rows(out1 / "candidates.jsonl") for c in r["candidates"])


# ------------------------------------------------------------------------------------------------ continuation


def _manual_continue(model, prompt_ids: list[int], kept: list[int], seed: int, steps: int, eos: int) -> list[int]:
    """An independent sampler: one row, no cache, no padding, no `generate`: each token drawn by the same
    per-row Gumbel-max rule from a generator seeded with `seed`."""
    import torch

    from bonsynth.generate.backends.hf import _PerRowSampler

    sampler = _PerRowSampler([seed], 1.0, 1.0, "cpu")
    ids = list(prompt_ids) + list(kept)
    new: list[int] = []
    with torch.inference_mode():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([ids])).logits[:, -1, :]
            tok = int(sampler(torch.tensor([ids]), logits).argmax(-1))
            new.append(tok)
            ids.append(tok)
            if tok == eos:
                break
    return new


def test_hf_survivor_continuation_equals_a_fresh_generation_from_prompt_plus_partial(tiny_policy_dir):
    from bonsynth.data.records import PromptRecord
    from bonsynth.generate.backends import make_backend

    backend = make_backend("hf", str(tiny_policy_dir), device="cpu")
    sampling = SamplingConfig(n=3, max_new_tokens=20, seed=11)
    recs = [PromptRecord(id=f"p{i}", prompt=t) for i, t in enumerate(corpus(3, seed=4))]
    # 6 tokens each, then each partial continued in one mixed batch (different kept lengths, left padding) ...
    prepared, items, cont = two_segments(backend, recs, sampling, 6, 10)
    eos = backend.tokenizer.eos_token_id
    for it, e in zip(items, cont, strict=True):
        assert e.tokens[: len(it.tokens)] == it.tokens  # the kept tokens are kept, never regenerated
        # ... and each equals a one-row generation from prompt + partial with the same seed
        want = _manual_continue(backend.model, list(prepared[it.prompt].ids), list(it.tokens), it.seed, 10, eos)
        assert list(e.tokens[len(it.tokens):]) == want
        assert e.text == backend.tokenizer.decode(list(e.tokens), skip_special_tokens=True)


def test_first_segment_is_the_prefix_of_a_longer_one(tiny_policy_dir):
    """A segment depends only on the seed and the kept tokens: stopping at T and continuing is sampling with
    the same seed for longer, cut at T (so a pruned candidate's text is what it had generated there)."""
    from bonsynth.data.records import PromptRecord
    from bonsynth.generate.backends import make_backend

    backend = make_backend("hf", str(tiny_policy_dir), device="cpu")
    sampling = SamplingConfig(n=2, max_new_tokens=20, seed=1)
    recs = [PromptRecord(id="a", prompt="the captain"), PromptRecord(id="b", prompt="hello wizard tower")]
    prepared = backend.prepare(recs, sampling)
    items = [Continuation(prompt=i, seed=100 + i) for i in range(2)]
    short = backend.extend(prepared, items, sampling, 5)
    long = backend.extend(prepared, items, sampling, 12)
    for s, lg in zip(short, long, strict=True):
        assert lg.tokens[: len(s.tokens)] == s.tokens


# ------------------------------------------------------------------------------------------------ resume


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bonsynth", *args], capture_output=True, text=True, timeout=300)


def _state(out: Path) -> dict:
    try:
        return json.loads((out / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_sigkill_then_resume_is_byte_identical(tmp_path, tiny_policy_dir, tiny_rm_dir):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"k{i}", "prompt": t} for i, t in enumerate(corpus(30, seed=9))])
    args = ["generate", "--policy", str(tiny_policy_dir), "--reward", str(tiny_rm_dir), "--prompts", str(prompts),
            "--backend", "hf", "--device", "cpu", "--n", "6", "--max-new-tokens", "20", "--seed", "3",
            "--batch-size", "2", "--select", "pairs", "--prune-at", "4,10", "--prune-keep", "0.5", "--quiet"]
    ref = tmp_path / "ref"
    r = _cli(*args, "--out", str(ref))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "killed"
    kills = 0
    for cond in (lambda: _state(out).get("prompts_done", 0) >= 4, lambda: _state(out).get("prompts_done", 0) >= 16):
        proc = subprocess.Popen([sys.executable, "-m", "bonsynth", *args, "--out", str(out), "--resume"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kills += sigkill_when(proc, cond)
    assert kills >= 1
    r = _cli(*args, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    for name in FILES:
        assert (ref / name).read_bytes() == (out / name).read_bytes(), name
    a, b = _manifest(ref), _manifest(out)
    a["config"].pop("out"), b["config"].pop("out")
    assert a == b
    # a resume under another schedule is refused: the schedule is part of the fingerprint
    argv = [x if x != "4,10" else "4,12" for x in args]
    r = _cli(*argv, "--out", str(out), "--resume")
    assert r.returncode == 2 and "prune_at" in r.stderr


# ------------------------------------------------------------------------------------------------ backends


@pytest.fixture(scope="module")
def openai_server(tiny_policy_dir):
    from openai_gpt2_server import GPT2OpenAIServer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    srv = GPT2OpenAIServer(AutoModelForCausalLM.from_pretrained(str(tiny_policy_dir)).eval(),
                           AutoTokenizer.from_pretrained(str(tiny_policy_dir))).start()
    yield srv
    srv.stop()


def test_openai_prunes_on_the_completions_endpoint(openai_server, tmp_path, tiny_policy_dir, tiny_rm_dir,
                                                   prompts_file):
    """Each continuation is one /completions request: prompt + the partial reply as text, n=1, its segment seed."""
    from bonsynth.generate.backends.openai_backend import OpenAIBackend
    from bonsynth.generate.seeding import segment_seed

    openai_server.reset()
    backend = OpenAIBackend("tiny-gpt2", base_url=openai_server.base_url, api_key_env="", tokenizer=str(tiny_policy_dir))
    out = tmp_path / "out"
    manifest = run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts_file, out, backend="openai", n=4,
                                 max_new_tokens=10, prune_at=[3], prune_keep=0.5, limit=4), backend=backend)
    rows = _rows(out / "candidates.jsonl")
    bodies = [r["body"] for r in openai_server.requests]
    assert all(r["path"] == "/v1/completions" and r["body"]["n"] == 1 for r in openai_server.requests)
    for row in rows:
        cands = row["candidates"]
        alive = [c for c in cands if c["pruned_at"] == 3 or (c["pruned_at"] is None and c["num_tokens"] > 3)]
        assert len(alive) - sum(c["pruned_at"] == 3 for c in cands) == kept_count(0.5, len(alive))
        for c in cands:
            first = next(b for b in bodies if b["seed"] == segment_seed(7, row["id"], c["index"], 0))
            assert first["max_tokens"] == 3 and first["prompt"] == row["prompt"]
            if c["pruned_at"] is None and c["num_tokens"] > 3:  # a survivor: continued from its partial text
                second = next(b for b in bodies if b["seed"] == segment_seed(7, row["id"], c["index"], 1))
                assert second["max_tokens"] == 7 and second["prompt"].startswith(row["prompt"])
                assert c["text"].startswith(second["prompt"][len(row["prompt"]):])
    assert manifest["summary"]["generated_tokens"] == sum(c["num_tokens"] for r in rows for c in r["candidates"])


def test_openai_chat_endpoint_cannot_prune(tmp_path, tiny_rm_dir, chat_prompts_file):
    out = tmp_path / "out"
    code, _, err = run_bonsynth(["generate", "--policy", "m", "--reward", str(tiny_rm_dir), "--prompts",
                                 str(chat_prompts_file), "--out", str(out), "--backend", "openai", "--base-url",
                                 "http://127.0.0.1:9/v1", "--prune-keep", "0.5", "--quiet", "--device", "cpu"])
    assert code == 2 and err.count("\n") == 1 and "--prune-at/--prune-keep" in err and "/completions" in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ loop recipe


def test_recipe_generation_prune_keys_reach_the_rounds_not_the_eval(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from bonsynth.errors import ConfigError
    from bonsynth.loop.recipe import parse_recipe
    from bonsynth.loop.runner import LoopRunner
    from tests.conftest import config_in_generation_child

    base = {"out": "runs/x", "policy": "demo:policy", "rewards": ["demo:rm"], "prompts": ["demo:data/prompts.jsonl"],
            "rounds": 2, "update": {"method": "sft"}}
    plain = parse_recipe(base)
    pruned = parse_recipe(dict(base, generation={"prune_at": [16, 48], "prune_keep": 0.25}))
    assert pruned.fingerprint() != plain.fingerprint()
    assert parse_recipe(dict(base, generation={"prune_keep": None})).fingerprint() == plain.fingerprint()

    runner = LoopRunner(pruned, SimpleNamespace(), tmp_path / "loop", show_progress=False)
    kw = dict(policy="/m/p", rewards=["/m/rm"], weights=None, prompts=tmp_path / "p.jsonl", out=tmp_path / "g", n=4,
              temperature=1.0, top_p=1.0, max_new_tokens=128, seed=1, select="best")
    round_cfg = runner._gen_config(**kw, prune=True)
    assert (round_cfg.prune_at, round_cfg.prune_keep) == ([16, 48], 0.25)
    eval_cfg = runner._gen_config(**kw)  # what the eval runs use: never pruned
    assert (eval_cfg.prune_at, eval_cfg.prune_keep) == (None, None)
    got = config_in_generation_child(monkeypatch, round_cfg)  # the subprocess path rebuilds the same config
    assert got.fingerprint() == round_cfg.fingerprint() and got.prune_at == [16, 48] and got.prune_keep == 0.25

    for gen, needle in (({"prune_at": [8]}, "prune_at needs prune_keep"),
                        ({"prune_at": [200], "prune_keep": 0.5}, "prune_at 200 is not below max_new_tokens 128"),
                        ({"prune_keep": 2}, "prune_keep must be a share in (0, 1]")):
        with pytest.raises(ConfigError) as info:
            parse_recipe(dict(base, generation=gen), source="r.yaml")
        msg = str(info.value)
        assert msg.startswith("r.yaml: ") and "\n" not in msg and needle in msg, msg


def test_control_arm_never_picks_a_pruned_candidate(tmp_path):
    from bonsynth.loop.gold import write_control_data

    rows = [{"id": f"p{i}", "prompt": "hi", "skipped": None,
             "candidates": [{"index": j, "text": f"t{j}", "reward": float(j), "pruned_at": 4 if j % 2 else None}
                            for j in range(6)]} for i in range(20)]
    write_jsonl(tmp_path / "candidates.jsonl", rows)
    write_control_data(tmp_path, tmp_path / "control", seed=0, r=0, method="sft")
    picked = {row["completion"] for row in _rows(tmp_path / "control" / "sft.jsonl")}
    assert picked and picked <= {"t0", "t2", "t4"}


# ------------------------------------------------------------------------------------------------ ray


@pytest.mark.ray
@pytest.mark.slow
def test_ray_pruned_run_equals_local_pruned_run(tmp_path, tiny_policy_dir, tiny_rm_dir):
    """The Ray engine runs the same step: its policy replicas prune with their own RM copy, the score pool
    scores the finished candidates; the files equal the local run's byte for byte (one torch thread each)."""
    import torch

    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from bonsynth.generate.ray_engine import run_generate_ray

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"y{i}", "prompt": t} for i, t in enumerate(corpus(8, seed=8))])
    kw = dict(n=4, max_new_tokens=12, batch_size=4, prune_at=[3, 7], prune_keep=0.5, select="pairs",
              write_pairs=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts, tmp_path / "local", **kw))
    finally:
        torch.set_num_threads(threads)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        remote = run_generate_ray(_cfg(tiny_policy_dir, tiny_rm_dir, prompts, tmp_path / "ray", **kw), workers=1)
    finally:
        if started:
            ray.shutdown()
    for name in FILES:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    assert remote["summary"] == local["summary"] and local["summary"]["pruned"] > 0


def test_judge_never_judges_a_pruned_candidate(tmp_path):
    from collections import Counter

    from bonsynth.judge.run import usable_prompts

    rows = [{"id": "a", "prompt": "hi", "candidates": [
        {"index": 0, "text": "done", "reward": 1.0, "num_tokens": 5, "pruned_at": None},
        {"index": 1, "text": "part", "reward": 9.0, "num_tokens": 4, "pruned_at": 4},
        {"index": 2, "text": "nan", "reward": None, "num_tokens": 6, "pruned_at": None}]}]
    path = write_jsonl(tmp_path / "candidates.jsonl", rows)
    counts: Counter = Counter()
    got = [kept for _, kept in usable_prompts(path, False, counts)]
    assert got == [[(0, 1.0)]]
    assert counts["pruned"] == 1 and counts["null_proxy_reward"] == 1


def test_cli_pruned_run_summary_table(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts_file):
    out = tmp_path / "out"
    code, stdout, err = run_bonsynth(["generate", "--policy", str(tiny_policy_dir), "--reward", str(tiny_rm_dir),
                                      "--prompts", str(prompts_file), "--out", str(out), "--backend", "hf",
                                      "--device", "cpu", "--n", "4", "--max-new-tokens", "12", "--prune-keep", "0.5",
                                      "--quiet"])
    assert code == 0, err
    s = _manifest(out)["summary"]
    assert _manifest(out)["config"]["prune_keep"] == 0.5 and "prune_at" not in _manifest(out)["config"]
    assert "candidates pruned" in stdout and f"{s['generated_tokens']} (" in stdout
    # prune_keep alone: one point at 12 // 8 = 1 token
    assert {c["pruned_at"] for r in _rows(out / "candidates.jsonl") for c in r["candidates"]} <= {None, 1}
