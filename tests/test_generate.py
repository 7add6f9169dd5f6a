"""`bonsynth generate` end to end on tiny models: outputs, rewards, selection, errors, resume."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bonsynth.generate.backends.base import SamplingConfig
from bonsynth.generate.pipeline import GenerateConfig, run_generate


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bonsynth", *args], capture_output=True, text=True, timeout=300)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _cfg(policy, rm, prompts, out, **kw) -> GenerateConfig:
    base = dict(policy=str(policy), rewards=[str(rm)], prompts=str(prompts), out=str(out), n=4,
                backend="hf", max_new_tokens=12, seed=7, batch_size=5, device="cpu", show_progress=False)
    base.update(kw)
    return GenerateConfig(**base)


def test_generate_outputs_rewards_and_summary(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts_file):
    from bonsynth.rm.model import RewardModel

    out = tmp_path / "out"
    manifest = run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts_file, out))
    cands = _rows(out / "candidates.jsonl")
    assert [r["id"] for r in cands] == [f"q{i}" for i in range(12)]
    assert all(len(r["candidates"]) == 4 for r in cands)

    # Rewards equal an independent scoring of the same texts.
    rm = RewardModel.load(str(tiny_rm_dir), device="cpu")
    items = [(r["prompt"], c["text"]) for r in cands for c in r["candidates"]]
    expected = rm.score(items)
    got = [c["reward"] for r in cands for c in r["candidates"]]
    assert got == pytest.approx(expected, abs=1e-5)

    # best = argmax; sft/dpo rows follow the selection.
    sft = _rows(out / "sft.jsonl")
    dpo = _rows(out / "dpo.jsonl")
    assert len(sft) == 12
    for row, s in zip(cands, sft, strict=True):
        rewards = [c["reward"] for c in row["candidates"]]
        best = max(range(4), key=lambda i: (rewards[i], -i))
        assert row["selected"] == [best]
        assert s["completion"] == row["candidates"][best]["text"] and s["prompt"] == row["prompt"]
    for d in dpo:
        assert d["score_chosen"] > d["score_rejected"] and d["chosen"] != d["rejected"]

    all_r = [c["reward"] for r in cands for c in r["candidates"]]
    sel_r = [r["candidates"][r["selected"][0]]["reward"] for r in cands]
    s = manifest["summary"]
    assert s["mean_reward_all"] == pytest.approx(sum(all_r) / len(all_r))
    assert s["mean_reward_selected"] == pytest.approx(sum(sel_r) / len(sel_r))
    assert s["bon_gain"] == pytest.approx(s["mean_reward_selected"] - s["mean_reward_all"])
    assert s["bon_gain"] > 0
    assert manifest["counts"]["candidates"] == 48
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["models"]["policy"]["sha256"]
    assert "torch" in manifest["versions"]


def test_same_seed_same_outputs_whatever_the_batch_size(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts_file):
    run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts_file, tmp_path / "a", batch_size=12))
    run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts_file, tmp_path / "b", batch_size=3,
                      backend_options={"batch_size": 2}))
    a = _rows(tmp_path / "a" / "candidates.jsonl")
    b = _rows(tmp_path / "b" / "candidates.jsonl")
    assert [[c["text"] for c in r["candidates"]] for r in a] == [[c["text"] for c in r["candidates"]] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert [c["reward"] for c in ra["candidates"]] == pytest.approx([c["reward"] for c in rb["candidates"]], abs=1e-5)
    run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts_file, tmp_path / "c", seed=8))
    c = _rows(tmp_path / "c" / "candidates.jsonl")
    assert [r["candidates"][0]["text"] for r in a] != [r["candidates"][0]["text"] for r in c]


def test_hf_backend_per_prompt_seeding_and_finish_reasons(tiny_policy_dir):
    from bonsynth.data.records import PromptRecord
    from bonsynth.generate.backends.hf import HFBackend

    be = HFBackend(str(tiny_policy_dir), device="cpu", batch_size=3)
    recs = [PromptRecord(id=f"p{i}", prompt="the captain " * (i + 1)) for i in range(5)]
    sampling = SamplingConfig(n=3, max_new_tokens=6, seed=1)
    first = be.generate(recs, sampling)
    again = be.generate(list(reversed(recs)), sampling)[::-1]
    assert [[c.text for c in r.completions] for r in first] == [[c.text for c in r.completions] for r in again]
    for r in first:
        assert len(r.completions) == 3
        for c in r.completions:
            assert c.finish_reason in ("stop", "length")
            assert 1 <= c.num_tokens <= 6
            assert (c.finish_reason == "length") == (c.num_tokens == 6 and not c.text.endswith("<|endoftext|>"))
    greedy = be.generate(recs[:1], SamplingConfig(n=2, max_new_tokens=6, temperature=0.0))
    assert greedy[0].completions[0].text == greedy[0].completions[1].text



def test_hf_backend_prefills_each_prompt_once_same_samples(tiny_policy_dir, monkeypatch):
    """The prompt is run through the model once per prompt, not once per sample, and the samples are the ones
    `num_return_sequences` (every sample prefilled on its own) gives: mixed lengths, left padding, stop strings."""
    from bonsynth.generate.backends.hf import HFBackend

    be = HFBackend(str(tiny_policy_dir), device="cpu", batch_size=4)
    recs = _mixed_prompts([3, 9, 17, 5, 12])
    for sampling in (SamplingConfig(n=4, max_new_tokens=7, seed=5, temperature=0.9, top_p=0.9),
                     SamplingConfig(n=3, max_new_tokens=7, seed=2, stop=("e",))):
        shapes: list[tuple[int, int]] = []
        forward = be.model.forward

        @functools.wraps(forward)  # keeps the signature the backend inspects
        def spy(*args, _forward=forward, _shapes=shapes, **kw):
            _shapes.append(tuple(kw["input_ids"].shape))
            return _forward(*args, **kw)

        monkeypatch.setattr(be.model, "forward", spy)
        once = be.generate(recs, sampling)
        prompt_rows = [rows for rows, width in shapes if width > 1]
        assert prompt_rows and all(rows <= be.batch_size for rows in prompt_rows)  # prompts, never prompts x n
        assert sum(prompt_rows) == len(recs)
        monkeypatch.setattr(be.model, "forward", forward)
        monkeypatch.setattr(HFBackend, "_prefill_once", lambda self, ids, mask, n: None)  # every sample prefilled
        each = be.generate(recs, sampling)
        monkeypatch.undo()
        assert [[(c.text, c.finish_reason, c.num_tokens) for c in r.completions] for r in once] == \
            [[(c.text, c.finish_reason, c.num_tokens) for c in r.completions] for r in each]
        assert len({c.text for r in once for c in r.completions}) > len(recs)  # real sampling, not one reply


def _mixed_prompts(word_counts: list[int], seed: int = 3) -> list:
    import random

    from bonsynth.data.records import PromptRecord
    from tests.conftest import WORDS

    rng = random.Random(seed)
    return [PromptRecord(id=f"m{i}", prompt=" ".join(rng.choice(WORDS) for _ in range(k)))
            for i, k in enumerate(word_counts)]


def _spy(be) -> list[list[int]]:
    """Record each `generate` call's prompt lengths, and keep every completion's token ids on it."""
    from dataclasses import asdict, dataclass

    from bonsynth.generate.backends.base import Completion

    @dataclass(frozen=True)
    class IdsCompletion(Completion):
        ids: tuple[int, ...] = ()

    calls: list[list[int]] = []
    decode, generate_batch = be._decode, be._generate_batch

    def spy_decode(ids, sampling, eos, pad):
        c = decode(ids, sampling, eos, pad)
        return IdsCompletion(**asdict(c), ids=tuple(ids[: c.num_tokens]))

    def spy_generate_batch(batch, encoded, sampling):
        calls.append([len(e.ids) for e in encoded])
        return generate_batch(batch, encoded, sampling)

    be._decode, be._generate_batch = spy_decode, spy_generate_batch
    return calls


def _completions(results) -> list[list[tuple]]:
    return [[(c.text, c.ids, c.finish_reason, c.num_tokens) for c in r.completions] for r in results]


def test_hf_length_sorted_batches_give_identical_completions_in_input_order(tiny_policy_dir):
    from bonsynth.generate.backends.hf import HFBackend

    recs = _mixed_prompts([3, 80, 5, 41, 17, 60, 4, 33, 9, 72])
    sampling = SamplingConfig(n=3, max_new_tokens=10, seed=5)
    one = HFBackend(str(tiny_policy_dir), device="cpu", batch_size=1)
    one_calls = _spy(one)
    lengths = [len(e.ids) for e in one._encode(recs, sampling)]
    assert min(lengths) <= 5 and max(lengths) >= 70
    ref = one.generate(recs, sampling)
    assert sorted(one_calls) == sorted([k] for k in lengths)

    budget = 3 * 2 * (max(lengths) + 10)  # two of the longest prompts per call, more of the short ones
    grouped = HFBackend(str(tiny_policy_dir), device="cpu", batch_size=8, token_budget=budget)
    calls = _spy(grouped)
    got = grouped.generate(recs, sampling)
    # Input order, one result per prompt, every completion's text and token ids unchanged.
    assert [r.prompt_text for r in got] == [r.prompt for r in recs] == [r.prompt_text for r in ref]
    assert [r.prompt_tokens for r in got] == lengths
    assert all(len(r.completions) == 3 for r in got)
    assert _completions(got) == _completions(ref)
    # The calls were length-sorted, within budget, and batched more than one prompt at a time.
    assert sorted(k for c in calls for k in c) == sorted(lengths) and max(map(len, calls)) > 2
    assert [k for c in calls for k in c] == sorted(lengths, reverse=True)
    assert all(3 * len(c) * (max(c) + 10) <= budget and min(c) >= 0.5 * (max(c) + 10) - 10 for c in calls)

    # Input-order batches of 8 (the old grouping: 3-token prompts left-padded to 80) agree as well.
    enc = grouped._encode(recs, sampling)
    old = grouped._generate_batch(recs[:8], enc[:8], sampling) + grouped._generate_batch(recs[8:], enc[8:], sampling)
    assert _completions(old) == _completions(ref)


def test_plan_generate_batches_respects_budget_and_covers_every_prompt():
    import random

    from bonsynth.generate.backends.hf import plan_generate_batches

    rng = random.Random(0)
    for _ in range(300):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(0, 40))]
        n, mnt = rng.choice([1, 3, 8]), rng.choice([1, 16, 64])
        budget, batch_size = rng.choice([50, 500, 5_000, 100_000]), rng.choice([1, 3, 8, 64])
        batches = plan_generate_batches(lengths, n=n, max_new_tokens=mnt, budget=budget, batch_size=batch_size)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert [i for b in batches for i in b] == sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        for b in batches:
            assert 1 <= len(b) <= batch_size
            longest = max(lengths[i] for i in b) + mnt
            assert len(b) == 1 or n * len(b) * longest <= budget  # over budget only when one prompt alone is
            assert min(lengths[i] for i in b) + mnt >= 0.5 * longest  # no row more than half padding
    # A long prompt never shares a call with much shorter ones, even with room to spare.
    assert plan_generate_batches([300, 3, 280, 5], n=4, max_new_tokens=8, budget=10**6, batch_size=8) == [[0, 2], [3, 1]]
    assert plan_generate_batches([30, 30], n=4, max_new_tokens=8, budget=100, batch_size=8) == [[0], [1]]


@pytest.mark.parametrize("mode", ["skip", "truncate"])
def test_hf_long_prompts_in_mixed_batches_skip_or_truncate_as_before(tiny_policy_dir, mode):
    from bonsynth.data.records import PromptRecord
    from bonsynth.generate.backends.hf import HFBackend

    # 512-token context, 12 new tokens: a prompt may hold 500 tokens.
    recs = _mixed_prompts([4, 60, 30])
    recs[1:1] = [PromptRecord(id="long1", prompt="the captain " * 400)]
    recs.append(PromptRecord(id="long2", prompt="the sea " * 300))
    sampling = SamplingConfig(n=3, max_new_tokens=12, seed=2, long_prompt=mode)
    one = HFBackend(str(tiny_policy_dir), device="cpu", batch_size=1)
    _spy(one)
    ref = one.generate(recs, sampling)
    grouped = HFBackend(str(tiny_policy_dir), device="cpu", batch_size=8, token_budget=3 * 2 * 200)
    calls = _spy(grouped)
    got = grouped.generate(recs, sampling)
    full = [len(one.tokenizer(r.prompt)["input_ids"]) for r in recs]
    assert full[1] > 500 and full[4] > 500
    for res in (ref, got):
        assert [r.prompt_text for r in res] == [r.prompt for r in recs]
        for k in (0, 2, 3):
            assert res[k].skipped is None and not res[k].prompt_truncated and res[k].prompt_tokens == full[k]
        for k in (1, 4):
            if mode == "skip":
                assert res[k].skipped == "prompt-too-long" and res[k].completions == ()
                assert res[k].prompt_tokens == full[k] and not res[k].prompt_truncated
            else:
                assert res[k].skipped is None and len(res[k].completions) == 3
                assert res[k].prompt_tokens == 500 and res[k].prompt_truncated
    assert _completions(got) == _completions(ref)
    assert sorted(k for c in calls for k in c) == sorted(r.prompt_tokens for r in got if not r.skipped)

def test_chat_prompts_write_trl_conversational_rows(tmp_path, tiny_policy_dir, tiny_rm_dir, chat_prompts_file):
    out = tmp_path / "chat"
    run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, chat_prompts_file, out, write_pairs=True))
    sft = _rows(out / "sft.jsonl")
    assert sft[0]["messages"][-1]["role"] == "assistant"
    assert sft[0]["messages"][:2][0]["content"] == "You are a pirate."
    dpo = _rows(out / "dpo.jsonl")
    assert dpo and dpo[0]["chosen"][0]["role"] == "assistant"


def test_two_reward_models_are_z_normalised_and_weighted(tmp_path, tiny_policy_dir, tiny_rm_dir, tiny_rm2_dir, prompts_file):
    out = tmp_path / "two"
    run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts_file, out, rewards=[str(tiny_rm_dir), str(tiny_rm2_dir)],
                      reward_weights=[0.7, 0.3]))
    for row in _rows(out / "candidates.jsonl"):
        for c in row["candidates"]:
            r1, r2 = c["rewards"][tiny_rm_dir.name], c["rewards"][tiny_rm2_dir.name]
            assert c["reward"] == pytest.approx(0.7 * (r1 - 0.1) / 2.0 + 0.3 * (r2 + 0.3) / 0.5, abs=1e-5)


def test_outputs_load_in_datasets_and_trl(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts_file, tiny_tokenizer):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM

    out = tmp_path / "trl"
    run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts_file, out, write_pairs=True))
    sft = datasets.load_dataset("json", data_files=str(out / "sft.jsonl"), split="train")
    dpo = datasets.load_dataset("json", data_files=str(out / "dpo.jsonl"), split="train")
    cands = datasets.load_dataset("json", data_files=str(out / "candidates.jsonl"), split="train")
    assert len(sft) == 12 and len(cands) == 12 and len(dpo) > 0

    model = AutoModelForCausalLM.from_pretrained(str(tiny_policy_dir))
    common = dict(output_dir=str(tmp_path / "ck"), max_steps=1, per_device_train_batch_size=2, report_to="none",
                  save_strategy="no", use_cpu=True, logging_steps=1)
    sft_trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(**common, max_length=64), train_dataset=sft,
                                 processing_class=tiny_tokenizer)
    assert sft_trainer.train().training_loss > 0
    dpo_trainer = trl.DPOTrainer(model=model, args=trl.DPOConfig(**common, max_length=64), train_dataset=dpo,
                                 processing_class=tiny_tokenizer)
    assert dpo_trainer.train().training_loss > 0


def test_bad_input_exit_2_and_no_output(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts_file):
    out = tmp_path / "never"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "prompt": "ok"}\n{"id": "y", "prompt": ""}\n', encoding="utf-8")
    common = ["--policy", str(tiny_policy_dir), "--reward", str(tiny_rm_dir), "--out", str(out), "--backend", "hf"]
    r = _cli("generate", *common, "--prompts", str(bad))
    assert r.returncode == 2, r.stderr
    assert "bad.jsonl:2" in r.stderr and "prompt" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    r = _cli("generate", *common, "--prompts", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 2 and "missing.jsonl" in r.stderr and not out.exists()
    r = _cli("generate", "--policy", str(tiny_policy_dir), "--reward", str(tmp_path / "nope"), "--out", str(out),
             "--prompts", str(prompts_file), "--backend", "hf")
    assert r.returncode == 2 and "nope" in r.stderr and not out.exists()
    r = _cli("generate", *common, "--prompts", str(prompts_file), "--select", "worst")
    assert r.returncode == 2 and "--select" in r.stderr and not out.exists()


def test_existing_output_is_never_overwritten_and_resume_checks_config(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts_file):
    out = tmp_path / "o"
    run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts_file, out))
    before = (out / "candidates.jsonl").read_bytes()
    common = ["--policy", str(tiny_policy_dir), "--reward", str(tiny_rm_dir), "--prompts", str(prompts_file),
              "--out", str(out), "--backend", "hf", "--n", "4", "--max-new-tokens", "12"]
    r = _cli("generate", *common, "--seed", "7")
    assert r.returncode == 2 and "--resume" in r.stderr
    r = _cli("generate", *common, "--seed", "9", "--resume")
    assert r.returncode == 2 and "seed" in r.stderr
    assert (out / "candidates.jsonl").read_bytes() == before


def _start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "bonsynth", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)


def _state(out: Path) -> dict:
    try:
        return json.loads((out / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_is_byte_identical(tmp_path, tiny_policy_dir, tiny_rm_dir, tiny_tokenizer):
    from tests.conftest import corpus, sigkill_when, write_jsonl

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"k{i}", "prompt": t} for i, t in enumerate(corpus(40, seed=9))])
    args = ["generate", "--policy", str(tiny_policy_dir), "--reward", str(tiny_rm_dir), "--prompts", str(prompts),
            "--backend", "hf", "--n", "4", "--max-new-tokens", "24", "--seed", "3", "--batch-size", "2",
            "--select", "pairs", "--quiet"]
    ref = tmp_path / "ref"
    assert _cli(*args, "--out", str(ref)).returncode == 0

    out = tmp_path / "killed"
    # Kill points: as soon as the run dir appears, after a few batches, while a batch is being appended.
    kill_when = [
        lambda: (out / "state.json").exists(),
        lambda: _state(out).get("prompts_done", 0) >= 6,
        lambda: (out / "candidates.jsonl").exists()
        and (out / "candidates.jsonl").stat().st_size > _state(out).get("offsets", {}).get("candidates.jsonl", 0),
        lambda: _state(out).get("prompts_done", 0) >= 30,
    ]
    kills = 0
    for cond in kill_when:
        kills += sigkill_when(_start([*args, "--out", str(out), "--resume"]), cond)
        if _state(out).get("complete"):
            break
    assert kills >= 2
    r = _cli(*args, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    for name in ("candidates.jsonl", "sft.jsonl", "dpo.jsonl", "manifest.json"):
        a, b = (ref / name).read_bytes(), (out / name).read_bytes()
        if name == "manifest.json":
            ja, jb = json.loads(a), json.loads(b)
            ja["config"].pop("out"), jb["config"].pop("out")
            assert ja == jb
        else:
            assert a == b, name
    ids = [r["id"] for r in _rows(out / "candidates.jsonl")]
    assert ids == [f"k{i}" for i in range(40)]


def test_long_prompts_are_truncated_or_skipped_never_dropped(tmp_path, tiny_policy_dir, tiny_rm_dir):
    from tests.conftest import write_jsonl

    # The tiny policy has a 512-token context; with 12 new tokens a prompt may hold 500.
    long_text = "the captain " * 400
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "short", "prompt": "hello there"},
                                                 {"id": "long", "prompt": long_text}])
    out = tmp_path / "trunc"
    m = run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts, out))
    rows = {r["id"]: r for r in _rows(out / "candidates.jsonl")}
    assert rows["long"]["prompt_truncated"] is True and rows["long"]["prompt_tokens"] == 500
    assert len(rows["long"]["candidates"]) == 4 and rows["short"]["prompt_truncated"] is False
    assert m["counts"]["prompts_truncated"] == 1

    out = tmp_path / "skip"
    m = run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts, out, long_prompts="skip"))
    rows = {r["id"]: r for r in _rows(out / "candidates.jsonl")}
    assert rows["long"]["skipped"] == "prompt-too-long" and rows["long"]["candidates"] == []
    assert len(rows["short"]["candidates"]) == 4
    assert m["counts"]["prompts_skipped"] == 1 and m["counts"]["prompts"] == 2
    assert [r["id"] for r in _rows(out / "sft.jsonl")] == ["short"]


def test_best_of_n_library_matches_the_cli_path(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts_file):
    from bonsynth import BestOfN

    out_cli = tmp_path / "cli"
    run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts_file, out_cli))
    prompts = [json.loads(line) for line in prompts_file.read_text().splitlines()]
    with BestOfN(policy=str(tiny_policy_dir), reward=str(tiny_rm_dir), n=4, backend="hf", max_new_tokens=12,
                 seed=7, device="cpu", batch_size=5) as bon:
        records = list(bon.run(prompts))
        assert [r["id"] for r in records] == [p["id"] for p in prompts]
        manifest = bon.write(tmp_path / "lib")
    assert (tmp_path / "lib" / "candidates.jsonl").read_bytes() == (out_cli / "candidates.jsonl").read_bytes()
    assert (tmp_path / "lib" / "sft.jsonl").read_bytes() == (out_cli / "sft.jsonl").read_bytes()
    assert manifest["summary"] == json.loads((out_cli / "manifest.json").read_text())["summary"]
    with pytest.raises(TypeError):
        BestOfN(policy=str(tiny_policy_dir), reward=str(tiny_rm_dir), bogus=1)


def test_best_of_n_close_releases_both_engines(tiny_policy_dir, tiny_rm_dir):
    from bonsynth import BestOfN

    bon = BestOfN(policy=str(tiny_policy_dir), reward=str(tiny_rm_dir), n=2, backend="hf", max_new_tokens=4,
                  seed=1, device="cpu")
    list(bon.run(["Hello there."]))
    closed: list[str] = []
    backend_close, scorer_close = bon._backend.close, bon._scorer.close
    bon._backend.close = lambda: (closed.append("backend"), backend_close())[-1]
    bon._scorer.close = lambda: (closed.append("scorer"), scorer_close())[-1]
    bon.close()
    assert sorted(closed) == ["backend", "scorer"]
    assert bon._backend is None and bon._scorer is None
    assert len(list(bon.run(["Hi again."]))) == 1  # a later run loads them again


def test_every_engine_runs_the_one_best_of_n_step():
    """Only `generate/step.py` calls a scorer or builds rows: the CLI pipeline, `BestOfN` and the Ray actors go
    through it, so a change to the step reaches every engine."""
    import ast
    from pathlib import Path

    gen = Path(__file__).resolve().parent.parent / "bonsynth" / "generate"
    for path in sorted(gen.rglob("*.py")):
        if path.name == "step.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "score":
                owner = ast.unparse(node.func.value)
                assert "scorer" not in owner, f"{path.name}:{node.lineno} calls {owner}.score; use generate.step"
            if isinstance(node, ast.FunctionDef):
                assert node.name not in {"build_rows", "best_of_n_step"}, f"{path.name} redefines {node.name}"
