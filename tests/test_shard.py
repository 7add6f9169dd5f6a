"""Shard mode and gather: shards merged back equal the single run exactly; gaps and duplicates are errors."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from bonsynth.errors import BonsynthError
from bonsynth.generate.gather import gather
from bonsynth.generate.pipeline import GenerateConfig, run_generate, shard_range
from tests.conftest import corpus, write_jsonl


def _cfg(policy, rm, prompts, out, **kw):
    base = dict(policy=str(policy), rewards=[str(rm)], prompts=str(prompts), out=str(out), n=3, backend="hf",
                max_new_tokens=8, seed=11, batch_size=4, device="cpu", show_progress=False, select="pairs")
    base.update(kw)
    return GenerateConfig(**base)


def test_shard_ranges_cover_every_prompt_once_in_whole_batches():
    for total in (0, 1, 7, 40, 41):
        for count in (1, 2, 3, 5):
            ranges = [shard_range(total, 4, i, count) for i in range(count)]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
            assert all(lo % 4 == 0 for lo, _ in ranges)


def test_shards_gathered_equal_the_single_run(tmp_path, tiny_policy_dir, tiny_rm_dir):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"s{i}", "prompt": t} for i, t in enumerate(corpus(18, seed=4))])
    single = run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts, tmp_path / "single"))
    shard_dirs = []
    for i in (2, 0, 1):  # any order
        d = tmp_path / f"shard{i}"
        run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts, d, shard=f"{i}/3"))
        shard_dirs.append(d)
    merged = gather(shard_dirs, tmp_path / "merged")
    for name in ("candidates.jsonl", "sft.jsonl", "dpo.jsonl"):
        assert (tmp_path / "merged" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    assert merged["counts"] == single["counts"]
    assert merged["summary"] == single["summary"]
    assert json.loads((tmp_path / "merged" / "manifest.json").read_text())["gathered_from"]

    # A missing shard names the missing prompt ids; a shard directory given twice is named; a copy of a
    # shard (overlapping shards) names the duplicate prompts.
    with pytest.raises(BonsynthError, match="missing.*s8"):
        gather([shard_dirs[1], shard_dirs[0]], tmp_path / "gap")
    with pytest.raises(BonsynthError, match="shard directory given more than once: .*shard0"):
        gather([*shard_dirs, shard_dirs[1]], tmp_path / "dup")
    shutil.copytree(shard_dirs[1], tmp_path / "copy0")
    with pytest.raises(BonsynthError, match="more than once.*s0"):
        gather([*shard_dirs, tmp_path / "copy0"], tmp_path / "dup")
    assert not (tmp_path / "gap").exists() and not (tmp_path / "dup").exists()


def test_gather_refuses_mixed_configs_and_unfinished_shards(tmp_path, tiny_policy_dir, tiny_rm_dir):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"m{i}", "prompt": t} for i, t in enumerate(corpus(8, seed=2))])
    run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts, tmp_path / "a", shard="0/2"))
    run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts, tmp_path / "b", shard="1/2", seed=12))
    with pytest.raises(BonsynthError, match="seed"):
        gather([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    (tmp_path / "c").mkdir()
    with pytest.raises(BonsynthError, match="not finished"):
        gather([tmp_path / "a", tmp_path / "c"], tmp_path / "m")

    # Settings that do not change what a run writes may differ between shards (here: prefix sharing off in
    # one of them): those shards still gather.
    run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts, tmp_path / "d", shard="1/2", prefix_sharing="off"))
    merged = gather([tmp_path / "a", tmp_path / "d"], tmp_path / "ok")
    assert merged["counts"]["prompts"] == 8


def _gather_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from bonsynth.cli import cli
    from bonsynth.cli.common import run_guarded

    monkeypatch.setattr(sys, "argv", ["bonsynth", "gather", *args])
    try:
        run_guarded(cli)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr().err


def test_gather_refuses_a_shard_directory_given_twice(tmp_path, monkeypatch, capsys, tiny_policy_dir, tiny_rm_dir):
    # 3 prompts in batches of 4: shard 0/2 is empty, so giving it twice duplicates no prompt id; it used to pass.
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"e{i}", "prompt": t} for i, t in enumerate(corpus(3, seed=5))])
    shards = tmp_path / "shards"
    for i in (0, 1):
        run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts, shards / str(i), shard=f"{i}/2"))
    assert json.loads((shards / "0" / "manifest.json").read_text())["counts"]["prompts"] == 0
    os.symlink(shards / "0", tmp_path / "link0")
    capsys.readouterr()  # the generate runs' progress output
    zero, one = str(shards / "0"), str(shards / "1")
    out = tmp_path / "merged"
    for spelled in (zero, zero + "/", str(tmp_path / "shards" / "." / "0"), str(tmp_path / "link0")):
        code, err = _gather_cli(monkeypatch, capsys, zero, one, spelled, "--out", str(out))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (spelled, err)
        assert lines[0].startswith("error: shard directory given more than once: ") and str(Path(spelled)) in lines[0], err
        assert not out.exists()
    code, err = _gather_cli(monkeypatch, capsys, zero, one, "--out", str(out))
    assert code == 0 and out.is_dir(), err


def test_gather_reads_the_prompts_as_a_skip_invalid_run_did(tmp_path):
    # A run made with --skip-invalid (config key `skip_invalid`) numbered only the valid prompts.
    from bonsynth.errors import InputError
    from bonsynth.generate.gather import _expected_ids

    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": ""},
                                              {"id": "c", "prompt": "y"}])
    assert _expected_ids(str(path), {"config": {"skip_invalid": True}}) == ["a", "c"]
    assert _expected_ids(str(path), {"config": {"skip_invalid": True, "limit": 1}}) == ["a"]
    with pytest.raises(InputError, match="--skip-invalid"):
        _expected_ids(str(path), {"config": {}})
