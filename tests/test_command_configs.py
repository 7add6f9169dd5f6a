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


# ------------------------------------------------------------------------------------------------ one declaration


def test_declared_bounds_and_choices_are_checked_when_built():
    """`settings.check_declared`: each field's bounds and choices, one message naming the field, checked against
    the bounds written out here by hand."""
    from bonsynth.generate.pipeline import GenerateConfig
    from bonsynth.settings import FieldError

    base = {"policy": "p", "rewards": ["r"], "prompts": "x.jsonl", "out": "o"}
    for bad, says in [({"n": 0}, "`n` must be >= 1 (got 0)"), ({"n": 2.0}, "`n` must be a whole number >= 1"),
                      ({"n": True}, "`n` must be a number >= 1"), ({"temperature": -0.1}, "`temperature` must be >= 0"),
                      ({"top_p": 0}, "`top_p` must be in (0, 1]"), ({"top_p": 1.01}, "`top_p` must be in (0, 1]"),
                      ({"max_nonfinite": 2}, "`max_nonfinite` must be in [0, 1]"),
                      ({"max_model_len": 0}, "`max_model_len` must be >= 1"), ({"limit": -3}, "`limit` must be >= 1"),
                      ({"backend": "tgi"}, "`backend` must be auto, vllm, hf or openai (got 'tgi')"),
                      ({"long_prompts": "wrap"}, "`long_prompts` must be truncate or skip"),
                      ({"prefix_sharing": "sometimes"}, "`prefix_sharing` must be auto, on or off")]:
        with pytest.raises(FieldError) as e:
            GenerateConfig(**base, **bad)
        assert e.value.template.startswith(says), (bad, e.value.template)
    # the edges are in: 0 and 1 where the bound is closed, a float where the field is a float, bools for modes
    GenerateConfig(**base, temperature=0, top_p=1, max_nonfinite=1, prefix_sharing=True)
    with pytest.raises(FieldError, match="ngram must be >= 1"):
        FilterSettings(ngram=0)
    with pytest.raises(FieldError, match="max_requests must be >= 1"):
        SynthConfig(seeds="s", policy="p", num=1, out="o", max_requests=0)


def test_recipe_sections_are_the_config_fields():
    """The loop recipe's generation, selection and synth keys are the configs' own fields: the same default,
    bounds, choices and fingerprint mark, so a value the recipe takes is one the config takes and the reverse."""
    import typing

    from bonsynth.generate.pipeline import GenerateConfig
    from bonsynth.loop.recipe import (
        FILTER_KEYS,
        GENERATION_KEYS,
        SELECTION_KEYS,
        SYNTH_BATCH_KEYS,
        SYNTH_KEYS,
        GenerationSection,
        SelectionSection,
        SynthSection,
    )
    from bonsynth.settings import field_default, spec_of

    def bounds(info) -> dict:
        return {k: getattr(m, k) for m in info.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}

    for section, cls, keys in [(GenerationSection, GenerateConfig, GENERATION_KEYS),
                               (SelectionSection, GenerateConfig, SELECTION_KEYS),
                               (SynthSection, SynthConfig, SYNTH_KEYS + SYNTH_BATCH_KEYS),
                               (SynthSection, FilterSettings, FILTER_KEYS)]:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in keys:
            info, spec = section.model_fields[key], spec_of(cls, key)
            if not info.is_required():
                assert info.get_default(call_default_factory=True) == field_default(fields[key]), key
            assert bounds(info) == {k: getattr(spec, k) for k in ("ge", "gt", "le", "lt") if getattr(spec, k) is not None}
            mark = (info.json_schema_extra or {}).get("fingerprint", True)
            assert mark == spec.fingerprint, key
            if spec.choices and key != "backend":  # the loop takes fewer backends (its own check)
                assert set(spec.choices) <= set(typing.get_args(info.annotation)), key
    # every recipe key of these sections is either a config field or one of the loop's own few
    assert set(GenerationSection.model_fields) - set(GENERATION_KEYS) == {
        "gen_batch_size", "tensor_parallel_size", "gpu_memory_utilization", "subprocess"}
    assert set(SynthSection.model_fields) - set(SYNTH_KEYS + SYNTH_BATCH_KEYS + FILTER_KEYS) == {"per_round", "model"}
    assert set(SelectionSection.model_fields) == set(SELECTION_KEYS)
