"""CLI options for loading models safely, RM prefix sharing and a separate RM dtype (`rm score/eval`, `generate`)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from bonsynth.errors import BonsynthError, ConfigError
from bonsynth.generate.pipeline import GenerateConfig, backend_kwargs
from tests.conftest import config_in_generation_child, corpus, pickle_copy, write_jsonl

NEW_FIELDS = ("reward_dtype", "prefix_sharing", "trust_remote_code", "allow_unsafe_weights", "max_model_len",
              "enforce_eager", "max_nonfinite", "skip_invalid", "prune_at", "prune_keep")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def bin_rm_dir(tmp_path_factory, tiny_rm_dir) -> Path:
    return pickle_copy(tiny_rm_dir, tmp_path_factory.mktemp("bin") / "rm", "AutoModelForSequenceClassification")


@pytest.fixture(scope="module")
def bin_policy_dir(tmp_path_factory, tiny_policy_dir) -> Path:
    return pickle_copy(tiny_policy_dir, tmp_path_factory.mktemp("bin") / "policy", "AutoModelForCausalLM")


@pytest.fixture()
def shared_prompt_rows(tmp_path) -> Path:
    """Prompt/response rows, four responses per prompt (what prefix sharing groups)."""
    prompts, responses = corpus(3, seed=11), corpus(12, seed=12)
    rows = [{"prompt": prompts[i // 4], "response": r} for i, r in enumerate(responses)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`bonsynth ARGS` in this process, as `main()` runs it: (exit code, stderr)."""
    from bonsynth.cli import cli
    from bonsynth.cli.common import run_guarded

    monkeypatch.setattr(sys, "argv", ["bonsynth", *args])
    try:
        run_guarded(cli)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _rewards(path: Path) -> list[float]:
    return [row["reward"] for row in _rows(path)]


# ------------------------------------------------------------------------------------------------ rm score / eval


def test_rm_score_refuses_pickle_weights_unless_allowed(tmp_path, monkeypatch, capsys, tiny_rm_dir, bin_rm_dir,
                                                        shared_prompt_rows):
    out = tmp_path / "scored.jsonl"
    args = ["rm", "score", "--model", str(bin_rm_dir), "--input", str(shared_prompt_rows), "--output", str(out),
            "--device", "cpu"]
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2, err
    assert str(bin_rm_dir) in err and "pytorch_model.bin" in err and "--allow-unsafe-weights" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()

    code, err = run_cli(monkeypatch, capsys, *args, "--allow-unsafe-weights")
    assert code == 0, err
    safe = tmp_path / "safe.jsonl"
    code, err = run_cli(monkeypatch, capsys, "rm", "score", "--model", str(tiny_rm_dir), "--input",
                        str(shared_prompt_rows), "--output", str(safe), "--device", "cpu")
    assert code == 0, err
    assert _rewards(out) == pytest.approx(_rewards(safe), abs=1e-6)


def test_rm_eval_refuses_pickle_weights_unless_allowed(tmp_path, monkeypatch, capsys, bin_rm_dir):
    pairs = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in
                                                   zip(corpus(4, 1), corpus(4, 2), corpus(4, 3), strict=True)])
    args = ["rm", "eval", "--model", str(bin_rm_dir), "--data", str(pairs), "--json"]
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and str(bin_rm_dir) in err and "--allow-unsafe-weights" in err
    code, err = run_cli(monkeypatch, capsys, *args, "--allow-unsafe-weights", "--no-trust-remote-code")
    assert code == 0, err


def test_rm_score_prefix_sharing_on_and_off_agree(tmp_path, monkeypatch, capsys, tiny_rm_dir, shared_prompt_rows):
    from bonsynth.rm.model import RewardModel

    loaded: list[RewardModel] = []
    load = RewardModel.load.__func__

    def spy(cls, *a, **kw):
        loaded.append(load(cls, *a, **kw))
        return loaded[-1]

    monkeypatch.setattr(RewardModel, "load", classmethod(spy))
    rewards = {}
    for mode in ("on", "off", "auto"):
        out = tmp_path / f"{mode}.jsonl"
        code, err = run_cli(monkeypatch, capsys, "rm", "score", "--model", str(tiny_rm_dir), "--input",
                            str(shared_prompt_rows), "--output", str(out), "--device", "cpu", "--prefix-sharing", mode)
        assert code == 0, err
        rewards[mode] = _rewards(out)
    on, off, auto = loaded
    assert (on.prefix_sharing, off.prefix_sharing, auto.prefix_sharing) == (True, False, "auto")
    assert on.last_stats["num_shared_items"] == 12 and off.last_stats["num_shared_items"] == 0
    assert rewards["on"] == pytest.approx(rewards["off"], abs=1e-4)
    assert rewards["auto"] == pytest.approx(rewards["off"], abs=1e-4)
    code, err = run_cli(monkeypatch, capsys, "rm", "score", "--model", str(tiny_rm_dir), "--input",
                        str(shared_prompt_rows), "--output", str(tmp_path / "x.jsonl"), "--prefix-sharing", "yes")
    assert code == 2 and "--prefix-sharing" in err


# ------------------------------------------------------------------------------------------------ generate


def _generate_args(policy: Path, rm: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--policy", str(policy), "--reward", str(rm), "--prompts", str(prompts), "--out", str(out),
            "--backend", "hf", "--device", "cpu", "--n", "3", "--max-new-tokens", "8", "--limit", "4",
            "--seed", "3", "--quiet", *extra]


def test_generate_with_a_pickle_policy_needs_the_flag(tmp_path, monkeypatch, capsys, tiny_policy_dir, tiny_rm_dir,
                                                      bin_policy_dir, prompts_file):
    out = tmp_path / "never"
    r = subprocess.run([sys.executable, "-m", "bonsynth",
                        *_generate_args(bin_policy_dir, tiny_rm_dir, prompts_file, out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert str(bin_policy_dir) in r.stderr and "--allow-unsafe-weights" in r.stderr and "policy" in r.stderr
    assert not out.exists()

    unsafe, safe = tmp_path / "unsafe", tmp_path / "safe"
    code, err = run_cli(monkeypatch, capsys,
                        *_generate_args(bin_policy_dir, tiny_rm_dir, prompts_file, unsafe, "--allow-unsafe-weights"))
    assert code == 0, err
    code, err = run_cli(monkeypatch, capsys, *_generate_args(tiny_policy_dir, tiny_rm_dir, prompts_file, safe))
    assert code == 0, err
    texts = [[c["text"] for c in row["candidates"]] for row in _rows(unsafe / "candidates.jsonl")]
    assert texts == [[c["text"] for c in row["candidates"]] for row in _rows(safe / "candidates.jsonl")]
    manifest = json.loads((unsafe / "manifest.json").read_text())
    assert manifest["config"]["allow_unsafe_weights"] is True


def test_generate_with_a_pickle_rm_needs_the_flag(tmp_path, monkeypatch, capsys, tiny_policy_dir, bin_rm_dir,
                                                  prompts_file):
    out = tmp_path / "o"
    code, err = run_cli(monkeypatch, capsys, *_generate_args(tiny_policy_dir, bin_rm_dir, prompts_file, out))
    assert code == 2 and "reward model" in err and str(bin_rm_dir) in err and "--allow-unsafe-weights" in err
    assert not out.exists()
    # The flag also covers a safetensors policy (the hf backend must not insist on .bin once opted in).
    code, err = run_cli(monkeypatch, capsys,
                        *_generate_args(tiny_policy_dir, bin_rm_dir, prompts_file, out, "--allow-unsafe-weights"))
    assert code == 0, err


def test_generate_reward_dtype_is_separate_and_recorded(tmp_path, monkeypatch, capsys, tiny_policy_dir, tiny_rm_dir,
                                                        prompts_file):
    out = tmp_path / "o"
    code, err = run_cli(monkeypatch, capsys, *_generate_args(tiny_policy_dir, tiny_rm_dir, prompts_file, out,
                                                             "--dtype", "float32", "--reward-dtype", "bfloat16"))
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"]["dtype"] == "float32"
    assert manifest["models"]["rewards"][0]["dtype"] == "bfloat16"
    assert manifest["config"]["reward_dtype"] == "bfloat16" and manifest["config"]["dtype"] == "float32"
    assert manifest["counts"]["candidates"] == 12
    code, err = run_cli(monkeypatch, capsys, *_generate_args(tiny_policy_dir, tiny_rm_dir, prompts_file,
                                                             tmp_path / "bad", "--reward-dtype", "float8"))
    assert code == 2 and "--reward-dtype" in err and not (tmp_path / "bad").exists()


def test_generate_prefix_sharing_on_and_off_select_the_same(tmp_path, monkeypatch, capsys, tiny_policy_dir,
                                                            tiny_rm_dir, prompts_file):
    rows = {}
    for mode in ("on", "off"):
        out = tmp_path / mode
        code, err = run_cli(monkeypatch, capsys, *_generate_args(tiny_policy_dir, tiny_rm_dir, prompts_file, out,
                                                                 "--prefix-sharing", mode, "--select", "pairs"))
        assert code == 0, err
        rows[mode] = _rows(out / "candidates.jsonl")
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["models"]["rewards"][0]["prefix_sharing"] == {"requested": mode, "active": mode == "on",
                                                                      "reason": None if mode == "on" else "requested off"}
    assert [r["selected"] for r in rows["on"]] == [r["selected"] for r in rows["off"]]
    assert [r["pair"] for r in rows["on"]] == [r["pair"] for r in rows["off"]]
    on = [c["reward"] for r in rows["on"] for c in r["candidates"]]
    assert on == pytest.approx([c["reward"] for r in rows["off"] for c in r["candidates"]], abs=1e-4)
    # Sharing does not change what a run writes: switching it on a resume is allowed.
    code, err = run_cli(monkeypatch, capsys, *_generate_args(tiny_policy_dir, tiny_rm_dir, prompts_file,
                                                             tmp_path / "on", "--prefix-sharing", "off",
                                                             "--select", "pairs", "--resume"))
    assert code == 0, err


def test_vllm_only_options_are_errors_elsewhere(tmp_path, monkeypatch, capsys, tiny_policy_dir, tiny_rm_dir,
                                                prompts_file):
    for extra in (["--max-model-len", "64"], ["--enforce-eager"]):
        out = tmp_path / "o"
        code, err = run_cli(monkeypatch, capsys, *_generate_args(tiny_policy_dir, tiny_rm_dir, prompts_file, out,
                                                                 *extra))
        assert code == 2 and extra[0] in err and "vllm" in err and not out.exists()


# ------------------------------------------------------------------------------------------------ config plumbing


def _config(**kw) -> GenerateConfig:
    return GenerateConfig(policy="/m/p", rewards=["/m/rm"], prompts="/d/p.jsonl", out="/o", **kw)


def test_fingerprint_keeps_what_changes_outputs():
    base = _config(dtype="float32")
    same = [_config(dtype="float32", prefix_sharing="off"), _config(dtype="float32", trust_remote_code=True),
            _config(dtype="float32", allow_unsafe_weights=True), _config(dtype="float32", enforce_eager=True),
            _config(dtype="float32", reward_dtype="float32")]
    assert {c.fingerprint() for c in same} == {base.fingerprint()}
    assert _config(dtype="float32", reward_dtype="bfloat16").fingerprint() != base.fingerprint()
    assert _config(dtype="float32", max_model_len=512).fingerprint() != base.fingerprint()
    # New fields at their defaults leave the fingerprint as it was, so older runs still --resume; except
    # write_pairs: the select modes changed meaning with it, so a run from before must not continue.
    old = {k: v for k, v in asdict(base).items() if k not in NEW_FIELDS and k not in
           {"out", "resume", "batch_size", "device", "backend_options", "show_progress", "write_pairs"}}
    old["long_prompt"] = old.pop("long_prompts")  # the field's name when those runs were made
    old_fp = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert base.fingerprint() == hashlib.sha256(
        json.dumps(dict(old, write_pairs=False), sort_keys=True, default=str).encode()).hexdigest()[:16] != old_fp
    assert _config(dtype="float32", max_nonfinite=0.5).fingerprint() == base.fingerprint()  # may change on resume
    assert _config(dtype="float32", skip_invalid=True).fingerprint() != base.fingerprint()


@pytest.mark.parametrize(("kw", "flag"), [
    ({"reward_dtype": "int8"}, "--reward-dtype"),
    ({"prefix_sharing": "sometimes"}, "--prefix-sharing"),
    ({"max_model_len": 0}, "--max-model-len"),
    ({"backend": "hf", "max_model_len": 128}, "--max-model-len"),
    ({"backend": "openai", "enforce_eager": True}, "--enforce-eager"),
    ({"limit": 0}, "--limit"),  # 0 would be an empty run, a negative one would drop prompts from the end
    ({"limit": -3}, "--limit"),
    ({"long_prompts": "wrap"}, "--long-prompts"),
    ({"prune_at": [200], "prune_keep": 0.5}, "--prune-at"),
])
def test_config_validation(kw, flag):
    """Checked when the config is built. The library names the field, the CLI (the same message) its flag."""
    from bonsynth.cli.options import build_config

    field = next(k for k in kw if k != "backend")
    with pytest.raises(ConfigError) as lib:
        _config(**kw)
    assert field in str(lib.value) and "--" not in str(lib.value)
    with pytest.raises(ConfigError) as cli:
        build_config(GenerateConfig, **asdict(_config()) | kw)
    assert flag in str(cli.value) and field not in str(cli.value).replace(flag, "")


def test_options_reach_the_backends_and_the_rms():
    cfg = _config(reward_dtype="bfloat16", dtype="float32", prefix_sharing="off", trust_remote_code=True,
                  allow_unsafe_weights=True, max_model_len=256, enforce_eager=True, backend="vllm")
    cfg.validate()
    vllm = backend_kwargs(cfg, "vllm")
    assert vllm == {"trust_remote_code": True, "allow_unsafe_weights": True, "max_model_len": 256,
                    "enforce_eager": True, "dtype": "float32"}  # --dtype reaches the vLLM policy too
    assert backend_kwargs(_config(dtype="bf16", backend="vllm"), "vllm")["dtype"] == "bfloat16"
    assert backend_kwargs(_config(backend="vllm"), "vllm")["dtype"] == "auto"
    plain = _config(trust_remote_code=True)
    assert backend_kwargs(plain, "hf") == {"trust_remote_code": True, "allow_unsafe_weights": False,
                                           "device": "auto", "dtype": "auto"}
    assert backend_kwargs(plain, "openai") == {"trust_remote_code": True}
    assert cfg.reward_load_kwargs() == {"engine": "hf", "device": "auto", "dtype": "bfloat16",
                                        "prefix_sharing": "off", "trust_remote_code": True,
                                        "allow_unsafe_weights": True}
    assert _config(dtype="float16").reward_load_kwargs()["dtype"] == "float16"


def test_vllm_reward_engine_gets_the_loading_options(monkeypatch):
    import bonsynth.rm.vllm_scorer as vllm_scorer
    from bonsynth.rm.ensemble import RewardEnsemble

    seen = []

    class Fake:
        meta = None

        def __init__(self, path, **kw):
            seen.append((path, kw))

    monkeypatch.setattr(vllm_scorer, "VLLMRewardScorer", Fake)
    cfg = _config(reward_engine="vllm", reward_dtype="bfloat16", allow_unsafe_weights=True)
    RewardEnsemble.load(cfg.rewards, **cfg.reward_load_kwargs())
    assert seen == [("/m/rm", {"dtype": "bfloat16", "trust_remote_code": False, "allow_unsafe_weights": True})]


def test_loop_subprocess_carries_the_new_options(tmp_path, monkeypatch):
    cfg = _config(backend="vllm", reward_dtype="bfloat16", prefix_sharing=False, trust_remote_code=True,
                  allow_unsafe_weights=True, max_model_len=300, enforce_eager=True, show_progress=False)
    got = config_in_generation_child(monkeypatch, cfg)
    assert got.fingerprint() == cfg.fingerprint()
    assert {k: getattr(got, k) for k in NEW_FIELDS} == {k: getattr(cfg, k) for k in NEW_FIELDS}


def test_one_weights_check_for_every_loader(tmp_path, bin_rm_dir, tiny_policy_dir):
    from bonsynth.generate.backends.hf import HFBackend
    from bonsynth.models import check_model_source
    from bonsynth.rm.model import RewardModel

    with pytest.raises(BonsynthError, match="allow_unsafe_weights=True") as exc:
        RewardModel.load(bin_rm_dir)
    assert str(bin_rm_dir) in str(exc.value) and "--allow-unsafe-weights" in str(exc.value)
    with pytest.raises(BonsynthError, match="^reward model at .* has only pickle weights"):
        check_model_source(str(bin_rm_dir), what="reward model")
    assert check_model_source(str(bin_rm_dir), allow_unsafe_weights=True) == str(bin_rm_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(BonsynthError, match="^policy not found: .*no \\*.safetensors weights"):
        check_model_source(str(empty), what="policy")
    # Opting in still loads safetensors when that is what the directory has.
    backend = HFBackend(str(tiny_policy_dir), device="cpu", allow_unsafe_weights=True)
    assert backend.describe()["dtype"] == "float32"


def _generate_config_from_cli(monkeypatch, args: list[str]) -> GenerateConfig:
    """The GenerateConfig `bonsynth generate ARGS` builds (nothing runs)."""
    from bonsynth.cli import cli
    from bonsynth.generate import pipeline

    seen = []
    monkeypatch.setattr(pipeline, "run_generate", lambda c, **kw: seen.append(c) or {})
    monkeypatch.setattr("bonsynth.generate.report.summary_table", lambda *a, **k: "")
    cli.main(args=["generate", *args], standalone_mode=False)
    (got,) = seen
    return got


def test_generate_options_are_generated_from_the_config_fields():
    """Issue 14 (3): one source of truth. Every CLI field of GenerateConfig is an option of `bonsynth generate`,
    with its help text and default, and nothing but the few backend/engine/judge options is declared by hand."""
    import dataclasses

    from bonsynth.cli.generate import generate
    from bonsynth.settings import described, flag_of

    params = {p.name: p for p in generate.params}
    fields = [(f, s) for f, s in described(GenerateConfig) if s.cli]
    assert len(fields) == len(dataclasses.fields(GenerateConfig)) - 1  # all but backend_options
    for f, spec in fields:
        p = params[f.name]
        assert flag_of(GenerateConfig, f.name) in p.opts, f.name
        assert (p.help or "") == spec.help, f.name
        if f.default is not dataclasses.MISSING and spec.parse is None and not isinstance(f.default, bool):
            assert p.default == f.default, f.name
    hand = set(params) - {f.name for f, _ in fields}
    assert hand == {"gen_batch_size", "tensor_parallel_size", "gpu_memory_utilization", "base_url", "concurrency",
                    "engine", "workers", "gpus_per_worker", "address", "judges", "judge_weights"}


def test_generate_flags_build_the_config_the_library_would(monkeypatch, tmp_path):
    """Every kind of generated option (repeatable, parsed, choice, range, negatable, inverted) lands on its field."""
    got = _generate_config_from_cli(monkeypatch, [
        "--policy", "/m/p", "--reward", "/m/a", "--reward", "/m/b", "--reward-weights", "0.7,0.3",
        "--prompts", "/d/p.jsonl", "--out", str(tmp_path / "o"), "--n", "6", "--backend", "hf",
        "--temperature", "0.7", "--top-p", "0.9", "--max-new-tokens", "64", "--seed", "5", "--stop", "###",
        "--stop", "\n\nHuman:", "--long-prompts", "skip", "--select", "top-k:2", "--write-pairs", "--min-reward",
        "-1.5", "--min-margin", "0.25", "--dedup", "--length-normalize", "--batch-size", "9", "--resume",
        "--device", "cpu", "--dtype", "float32", "--format", "prompts", "--limit", "7", "--shard", "1/3",
        "--quiet", "--reward-dtype", "bfloat16", "--prefix-sharing", "off", "--trust-remote-code",
        "--allow-unsafe-weights", "--max-nonfinite", "0.1", "--skip-invalid", "--prune-at", "8,16",
        "--prune-keep", "0.5", "--gen-batch-size", "3"])
    want = GenerateConfig(
        policy="/m/p", rewards=["/m/a", "/m/b"], reward_weights=[0.7, 0.3], prompts="/d/p.jsonl",
        out=str(tmp_path / "o"), n=6, backend="hf", temperature=0.7, top_p=0.9, max_new_tokens=64, seed=5,
        stop=["###", "\n\nHuman:"], long_prompts="skip", select="top-k:2", write_pairs=True, min_reward=-1.5,
        min_margin=0.25, dedup=True, length_normalize=True, batch_size=9, resume=True, device="cpu",
        dtype="float32", prompt_format="prompts", limit=7, shard="1/3", show_progress=False,
        reward_dtype="bfloat16", prefix_sharing="off", trust_remote_code=True, allow_unsafe_weights=True,
        max_nonfinite=0.1, skip_invalid=True, prune_at=[8, 16], prune_keep=0.5, backend_options={"batch_size": 3})
    assert got == want
    defaults = _generate_config_from_cli(monkeypatch, ["--policy", "p", "--reward", "r", "--prompts", "x",
                                                       "--out", str(tmp_path / "d")])
    assert defaults == GenerateConfig(policy="p", rewards=["r"], prompts="x", out=str(tmp_path / "d"))


def test_generation_worker_runs_a_config_from_stdin_and_fails_in_one_line(tmp_path, tiny_policy_dir, tiny_rm_dir):
    """The loop's child process: a config on stdin is run like `bonsynth generate` (same files, same fingerprint);
    a bad config is one `error:` line and exit code 2, with nothing written."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"p{i}", "prompt": t} for i, t in enumerate(corpus(3))])
    cfg = GenerateConfig(policy=str(tiny_policy_dir), rewards=[str(tiny_rm_dir)], prompts=str(prompts),
                         out=str(tmp_path / "w"), n=2, max_new_tokens=4, backend="hf", device="cpu",
                         show_progress=False)
    worker = [sys.executable, "-m", "bonsynth.generate.worker"]
    r = subprocess.run(worker, input=json.dumps({"generate_config": cfg.to_dict()}), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert manifest["counts"]["candidates"] == 6 and "best-of-N summary" in r.stdout
    from bonsynth.generate.pipeline import run_generate

    here = GenerateConfig(**{**cfg.to_dict(), "out": str(tmp_path / "h")})
    run_generate(here)
    assert (tmp_path / "w" / "candidates.jsonl").read_bytes() == (tmp_path / "h" / "candidates.jsonl").read_bytes()

    for payload, needle in (("not json", "not a JSON config"),
                            (json.dumps({"generate_config": {**cfg.to_dict(), "nn": 3}}), "has no field nn"),
                            (json.dumps({"generate_config": {**cfg.to_dict(), "out": str(tmp_path / "bad"),
                                                             "n": 0}}), "n must be >= 1 (got 0)")):
        r = subprocess.run(worker, input=payload, capture_output=True, text=True, timeout=600)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines() == [r.stderr.strip().splitlines()[0]] and needle in r.stderr
    assert not (tmp_path / "bad").exists()


def test_generate_config_is_grouped_into_parts_and_help_lists_them():
    """Issue 14 (7): every field belongs to one part (run, sampling, selection, reward, backend); `--help` lists
    the options part by part; the loop recipe's generation and selection sections use the same names."""
    from click.testing import CliRunner

    from bonsynth.cli.generate import generate
    from bonsynth.generate.pipeline import GROUPS
    from bonsynth.loop.recipe import GenerationSection, SelectionSection
    from bonsynth.settings import described

    cfg = _config()
    parts = {name: cfg.part(name) for name in GROUPS}
    assert sorted(k for p in parts.values() for k in p) == sorted(asdict(cfg))  # each field in exactly one part
    assert parts["sampling"]["n"] == cfg.n and "select" in parts["selection"] and "policy" in parts["backend"]
    assert cfg.sampling().n == parts["sampling"]["n"]
    with pytest.raises(ValueError, match="no part"):
        cfg.part("misc")
    text = CliRunner().invoke(generate, ["--help"], terminal_width=120).output
    heads = [line for line in text.splitlines() if line.endswith(" options:")]
    assert heads == ["Run options:", "Sampling options:", "Selection options:", "Reward options:", "Backend options:",
                     "Engine options:", "Judge options:", "Other options:"]
    sampling = text[text.index("Sampling options:"):text.index("Selection options:")]
    assert all(f"--{k.replace('_', '-')}" in sampling for k in ("n", "temperature", "top-p", "prune-keep"))
    fields = {f.name: s.group for f, s in described(GenerateConfig)}
    backend_knobs = {"subprocess", "gen_batch_size", "tensor_parallel_size", "gpu_memory_utilization"}  # backend_options
    for key in set(GenerationSection.model_fields) - backend_knobs:  # one name: field, flag and recipe key
        assert fields[key] in ("sampling", "reward", "backend", "run"), key
    assert {fields[k] for k in SelectionSection.model_fields} == {"selection"}
