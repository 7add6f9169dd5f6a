"""Issue 14 (7): `bonsynth judge` and `bonsynth prompts synth` run on configs that are their CLI.

Each command's options are generated from its config's fields (`bonsynth.settings`), the flags build exactly
the config the library would, and a bad value fails when the config is built: the library's message names
the field, the command line's the flag (one line, exit 2, nothing written).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bonsynth.data.synth import FilterSettings
from bonsynth.errors import ConfigError
from bonsynth.generate.synth import SynthConfig
from bonsynth.judge.run import JudgeConfig
from bonsynth.settings import described, flag_of
from tests.conftest import run_bonsynth


def _command(path: list[str]):
    from bonsynth.cli import cli

    cmd = cli
    for name in path:
        cmd = cmd.commands[name]
    return cmd


@pytest.mark.parametrize(("path", "configs", "hand"), [
    (["judge"], [JudgeConfig], {"run_dir", "as_json"}),
    (["prompts", "synth"], [SynthConfig, FilterSettings], {"gen_batch_size", "base_url", "concurrency"}),
])
def test_options_are_generated_from_the_config_fields(path, configs, hand):
    params = {p.name: p for p in _command(path).params}
    declared = set()
    for cls in configs:
        for f, spec in described(cls):
            if not spec.cli:
                continue
            declared.add(f.name)
            p = params[f.name]
            assert flag_of(cls, f.name) in p.opts, f.name
            assert (p.help or "") == spec.help, f.name
            if f.default is not dataclasses.MISSING and spec.parse is None and not isinstance(f.default, bool):
                assert p.default == f.default, f.name
    assert set(params) - declared == hand  # only what is not a config field is written by hand


def _captured(monkeypatch, module: str, name: str, args: list[str]):
    """The config the command builds from ARGS (nothing runs: the run function is replaced)."""
    from bonsynth.cli import cli

    seen = []

    class Stop(Exception):
        pass

    def capture(cfg, *a, **kw):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(module + "." + name, capture)
    with pytest.raises(Stop):
        cli.main(args=args, standalone_mode=False)
    (got,) = seen
    return got


def test_judge_flags_build_the_config_the_library_would(monkeypatch, tmp_path):
    got = _captured(monkeypatch, "bonsynth.judge.run", "judge_run", [
        "judge", str(tmp_path / "run"), "--judge", "/m/a", "--judge", "/m/b", "--judge-weights", "0.7,0.3",
        "--out", str(tmp_path / "rep"), "--bootstrap", "500", "--seed", "4", "--device", "cpu", "--dtype", "float32",
        "--prefix-sharing", "off", "--trust-remote-code", "--allow-unsafe-weights", "--concurrency", "3",
        "--judge-max-tokens", "9"])
    assert got == JudgeConfig(run_dir=str(tmp_path / "run"), judges=["/m/a", "/m/b"], judge_weights=[0.7, 0.3],
                              out=str(tmp_path / "rep"), bootstrap=500, seed=4, device="cpu", dtype="float32",
                              prefix_sharing="off", trust_remote_code=True, allow_unsafe_weights=True,
                              concurrency=3, judge_max_tokens=9)
    llm = _captured(monkeypatch, "bonsynth.judge.run", "judge_run", [
        "judge", "r", "--judge", "openai:m", "--judge-mode", "pairwise", "--judge-prompt", "t.txt",
        "--base-url", "http://127.0.0.1:1/v1"])
    assert llm == JudgeConfig(run_dir="r", judges=["openai:m"], judge_mode="pairwise", judge_prompt="t.txt",
                              base_url="http://127.0.0.1:1/v1")
    assert _captured(monkeypatch, "bonsynth.judge.run", "judge_run", ["judge", "r", "--judge", "j"]) == JudgeConfig(
        run_dir="r", judges=["j"])


def test_synth_flags_build_the_config_the_library_would(monkeypatch, tmp_path):
    got = _captured(monkeypatch, "bonsynth.generate.synth", "run_synth", [
        "prompts", "synth", "--seeds", "s.jsonl", "--policy", "/m/p", "--num", "12", "--out", str(tmp_path / "o.jsonl"),
        "--backend", "hf", "--template", "t.txt", "--shots", "2", "--per-request", "3", "--seed", "5",
        "--temperature", "0.8", "--top-p", "0.9", "--max-new-tokens", "40", "--batch-size", "4", "--max-requests",
        "30", "--skip-invalid", "--resume", "--device", "cpu", "--dtype", "float32", "--trust-remote-code",
        "--allow-unsafe-weights", "--quiet", "--max-similarity", "0.5", "--ngram", "1", "--min-words", "2",
        "--max-words", "50", "--no-language-check", "--gen-batch-size", "6"])
    assert got == SynthConfig(
        seeds="s.jsonl", policy="/m/p", num=12, out=str(tmp_path / "o.jsonl"), backend="hf", template="t.txt",
        shots=2, per_request=3, seed=5, temperature=0.8, top_p=0.9, max_new_tokens=40, batch_size=4,
        max_requests=30, skip_invalid=True, resume=True, device="cpu", dtype="float32", trust_remote_code=True,
        allow_unsafe_weights=True, show_progress=False, backend_options={"batch_size": 6},
        filters=FilterSettings(max_similarity=0.5, ngram=1, min_words=2, max_words=50, language_check=False))
    defaults = _captured(monkeypatch, "bonsynth.generate.synth", "run_synth",
                         ["prompts", "synth", "--seeds", "s", "--policy", "p", "--num", "3", "--out", "o.jsonl"])
    assert defaults == SynthConfig(seeds="s", policy="p", num=3, out="o.jsonl")


@pytest.mark.parametrize(("cls", "base", "bad", "field", "flag"), [
    (JudgeConfig, {"run_dir": "r", "judges": ["a"]}, {"judges": []}, "judges", "--judge"),
    (JudgeConfig, {"run_dir": "r", "judges": ["a"]}, {"judge_weights": [1.0]}, "judge_weights", "--judge-weights"),
    (JudgeConfig, {"run_dir": "r", "judges": ["a", "b"]}, {"judge_weights": [1.0, float("nan")]}, "judge_weights",
     "--judge-weights"),
    (JudgeConfig, {"run_dir": "r", "judges": ["a"]}, {"bootstrap": 10}, "bootstrap", "--bootstrap"),
    (JudgeConfig, {"run_dir": "r", "judges": ["a"]}, {"judge_mode": "pairwise"}, "judge_mode", "--judge-mode"),
    (JudgeConfig, {"run_dir": "r", "judges": ["openai:m"]}, {"judge_mode": "listwise"}, "judge_mode", "--judge-mode"),
    (JudgeConfig, {"run_dir": "r", "judges": ["openai:m"]}, {"concurrency": 0}, "concurrency", "--concurrency"),
    (JudgeConfig, {"run_dir": "r", "judges": ["a"]}, {"prefix_sharing": "sometimes"}, "prefix_sharing",
     "--prefix-sharing"),
    (SynthConfig, {"seeds": "s", "policy": "p", "num": 2, "out": "o"}, {"num": 0}, "num", "--num"),
    (SynthConfig, {"seeds": "s", "policy": "p", "num": 2, "out": "o"}, {"per_request": 0}, "per_request",
     "--per-request"),
    (SynthConfig, {"seeds": "s", "policy": "p", "num": 2, "out": "o"}, {"top_p": 0.0}, "top_p", "--top-p"),
    (SynthConfig, {"seeds": "s", "policy": "p", "num": 2, "out": "o"}, {"resume": True, "overwrite": True}, "resume",
     "--resume"),
    (FilterSettings, {}, {"max_similarity": 0.0}, "max_similarity", "--max-similarity"),
    (FilterSettings, {}, {"min_words": 5, "max_words": 2}, "min_words", "--min-words"),
    (FilterSettings, {}, {"ngram": 0}, "ngram", "--ngram"),
])
def test_checked_on_construction_naming_the_field_or_the_flag(cls, base, bad, field, flag):
    from bonsynth.cli.options import build_config

    with pytest.raises(ConfigError) as lib:
        cls(**base | bad)
    assert field in str(lib.value) and "--" not in str(lib.value)
    with pytest.raises(ConfigError) as cli:
        build_config(cls, **base | bad)
    assert flag in str(cli.value) and field not in str(cli.value).replace(flag, "")


@pytest.mark.parametrize("args", [
    ["judge", "RUN", "--judge", "a", "--bootstrap", "5"],
    ["judge", "RUN", "--judge", "a", "--judge-weights", "0.5,x"],
    ["judge", "RUN", "--judge", "a", "--base-url", "http://127.0.0.1:1/v1"],
    ["prompts", "synth", "--seeds", "s", "--policy", "p", "--num", "0", "--out", "OUT"],
    ["prompts", "synth", "--seeds", "s", "--policy", "p", "--num", "2", "--out", "OUT", "--ngram", "0"],
])
def test_cli_errors_are_one_line_naming_the_flag(tmp_path, args):
    out = tmp_path / "out.jsonl"
    args = [str(out) if a == "OUT" else str(tmp_path / "run") if a == "RUN" else a for a in args]
    code, stdout, err = run_bonsynth(args)
    assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err, err
    named = {"--bootstrap", "--judge-weights", "--base-url", "--num", "--ngram"} & set(args)
    assert any(flag in err for flag in named), err
    assert not out.exists() and not (tmp_path / "run").exists() and not list(Path(tmp_path).iterdir())
