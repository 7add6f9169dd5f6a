"""The shared YAML loader: bounded alias expansion ("billion laughs"), line numbers in syntax errors, short reprs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bonsynth.data.yaml_io import MAX_NODES, load_yaml, parse_yaml, short_repr
from bonsynth.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# Nine levels of nine aliases each: 9**9 (~387 million) strings once expanded, a few hundred bytes as text.
BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]\n" for prev, cur in zip("abcdefgh", "bcdefghi", strict=True)
)
# The same bomb under a key each command validates (and, before the fix, printed the repr of): both hung.
_BOMB_ITEMS = "".join(f"    - {line.split(': ', 1)[1]}\n" for line in BILLION_LAUGHS.splitlines())
LAUGHS_FOR = {
    "merge": "merge_method: linear\nmodels: [{model: a}, {model: b}]\nparameters:\n  weight:\n" + _BOMB_ITEMS,
    "loop": "out: runs/x\npolicy: p\nrewards: [r]\nprompts: [q.jsonl]\nrounds: 1\nupdate: {method: sft}\n"
            "prompts_per_round:\n" + _BOMB_ITEMS.replace("    - ", "  - "),
}


def _bonsynth(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bonsynth.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})


def test_billion_laughs_is_refused_while_parsing_fast():
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"^x\.yaml:\d+: refused: the YAML expands to more than 100,000 values"):
        parse_yaml(BILLION_LAUGHS, "x.yaml")
    assert time.perf_counter() - start < 2


def test_alias_expansion_limit_counts_expanded_nodes():
    # One list of 1000 scalars aliased 99 times: 100,000+ expanded nodes, though the text holds ~1,100.
    base = "a: &a [" + ", ".join(["1"] * 1000) + "]\nb: [" + ", ".join(["*a"] * 99) + "]\n"
    with pytest.raises(ConfigError, match="expands to more than"):
        parse_yaml(base, "x.yaml")
    ok = "a: &a [" + ", ".join(["1"] * 1000) + "]\nb: [" + ", ".join(["*a"] * 50) + "]\n"
    data = parse_yaml(ok, "x.yaml")
    assert len(data["b"]) == 50 and data["b"][0] == [1] * 1000
    assert MAX_NODES == 100_000


def test_recursive_alias_is_refused():
    with pytest.raises(ConfigError, match=r"^r\.yaml:1: refused: a recursive alias"):
        parse_yaml("a: &a [1, *a]\n", "r.yaml")


def test_syntax_error_names_the_line(tmp_path):
    p = tmp_path / "recipe.yaml"
    p.write_text("out: x\nrounds: 2\nseed: 1\npolicy: p\nrewards: [r]\nprompts: [q]\nupdate: sft\n  method: sft\n")  # line 8 is bad
    with pytest.raises(ConfigError) as info:
        load_yaml(p, "recipe")
    assert str(info.value).startswith(f"{p}:8: mapping values are not allowed here"), info.value
    assert "\n" not in str(info.value)


def test_plain_yaml_loads_as_safe_load_does(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("a: 1\nb: [x, {c: true}]\nd: &d {e: 2}\nf: *d\n")
    data, text = load_yaml(p)
    assert data == {"a": 1, "b": ["x", {"c": True}], "d": {"e": 2}, "f": {"e": 2}}
    assert text == p.read_text()
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        parse_yaml("a: !!python/object:os.system x\n", "evil.yaml")  # still a safe loader


def test_short_repr_is_bounded_and_cheap():
    shared = ["lol"] * 9
    for _ in range(12):  # 9**13 items once expanded: a plain repr() would never finish
        shared = [shared] * 9
    start = time.perf_counter()
    text = short_repr(shared)
    assert len(text) <= 200 and time.perf_counter() - start < 1
    assert short_repr("abc") == "'abc'"
    assert len(short_repr("x" * 10_000)) <= 200


@pytest.mark.parametrize("command", ["merge", "loop"])
def test_cli_refuses_billion_laughs_in_seconds(tmp_path, command):
    cfg = tmp_path / "laughs.yaml"
    cfg.write_text(LAUGHS_FOR[command])
    args = [command, str(cfg)] + ([str(tmp_path / "out")] if command == "merge" else [])
    start = time.perf_counter()
    proc = _bonsynth(*args, timeout=60)  # before the fix: no end, memory growing
    assert time.perf_counter() - start < 60
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {cfg}:"), proc.stderr
    assert "expands to more than 100,000 values" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["merge", "loop"])
def test_cli_bad_yaml_names_the_line(tmp_path, command):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n  oops: here: x\n")
    args = [command, str(cfg)] + ([str(tmp_path / "out")] if command == "merge" else [])
    proc = _bonsynth(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {cfg}:5: "), lines[0]


def test_validation_message_with_a_big_value_stays_short(tmp_path):
    # Below the alias limit, but a value whose full repr is ~50,000 characters: the message prints its start only.
    from bonsynth.loop.recipe import load_recipe
    from bonsynth.merge.config import load_config

    big = f"[&a [{', '.join(['long-string-value'] * 30)}], " + ", ".join(["*a"] * 90) + "]"
    p = tmp_path / "m.yaml"
    p.write_text(f"merge_method: linear\nmodels: [{{model: a}}, {{model: b}}]\nparameters: {{weight: {big}}}\n")
    r = tmp_path / "r.yaml"
    r.write_text("out: runs/x\npolicy: p\nrewards: [r]\nprompts: [q.jsonl]\nrounds: 2\nupdate: {method: sft}\n"
                 f"prompts_per_round: {big}\n")
    for load, path in ((load_config, p), (load_recipe, r)):
        with pytest.raises(ConfigError) as info:
            load(path)
        msg = str(info.value)
        assert "long-string-value" in msg and len(msg) < 1000 and "\n" not in msg, msg
