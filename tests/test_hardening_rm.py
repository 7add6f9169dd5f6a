"""Hardening of the reward-model and model-loading side (issue 11): atomic `rm train` / `merge` outputs,
environment errors as one line, broken model directories (no tokenizer, corrupt safetensors, remote code),
tied ranked groups, non-finite rewards as null, and `rm calibrate` / `merge --calibrate-data`."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from bonsynth.errors import BonsynthError  # noqa: E402
from bonsynth.rm.meta import META_FILE, UNMEASURED, RMMeta, file_sha256  # noqa: E402
from tests.conftest import corpus, write_jsonl  # noqa: E402

TOKENIZER_GLOBS = ("tokenizer*", "special_tokens_map.json", "vocab*", "merges.txt")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads cost more than they save


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from bonsynth.cli import main

    monkeypatch.setattr(sys, "argv", ["bonsynth", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str, *needles: str) -> str:
    """The CLI's user-error shape: one `error: ...` line, last on stderr, no traceback (progress bars and the
    Trainer's log lines before it are not part of the error)."""
    lines = [line for line in err.replace("\r", "\n").strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def hidden_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def pairs_rows(n: int = 8, seed: int = 0) -> list[dict]:
    texts = corpus(2 * n, seed=seed)
    return [{"prompt": f"question {i}", "chosen": texts[2 * i] + " gold", "rejected": texts[2 * i + 1]}
            for i in range(n)]


@pytest.fixture()
def pairs_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", pairs_rows())


def train_args(base: Path | str, data: Path, out: Path, *extra: str, objective: str = "pairwise") -> list[str]:
    return ["rm", "train", "--base", str(base), "--data", str(data), "--objective", objective, "--out", str(out),
            "--epochs", "1", "--batch-size", "8", "--max-length", "64", "--eval-split", "0", "--report-to", "none",
            *extra]


def copy_without_tokenizer(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*TOKENIZER_GLOBS))
    return dst


# ------------------------------------------------------------------------------ 3, 4, 12: rm train output dir


def test_rm_train_refuses_a_non_empty_out_unless_overwrite(monkeypatch, capsys, tmp_path, tiny_policy_dir, pairs_file):
    out = tmp_path / "rm"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(monkeypatch, capsys, *train_args(tiny_policy_dir, pairs_file, out))
    assert code == 2
    one_error_line(err, str(out), "not empty", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    code, stdout, err = run_cli(monkeypatch, capsys, *train_args(tiny_policy_dir, pairs_file, out, "--overwrite"))
    assert code == 0, err
    assert json.loads(stdout)["out"] == str(out)
    assert not (out / "keep.txt").exists()
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert RMMeta.load(out).reward_stats_source == "train:train"
    assert hidden_leftovers(tmp_path) == []


def test_rm_train_trains_aside_so_out_is_untouched_until_the_end(monkeypatch, tmp_path, tiny_policy_dir, pairs_file):
    """The Trainer's output_dir is the temp directory: while training runs, OUT does not exist yet."""
    from bonsynth.rm import train as train_mod
    from bonsynth.rm.train import RMTrainConfig

    out = tmp_path / "rm"
    seen = {}
    real = train_mod._make_trainer

    def spy(cfg, model, tokenizer, dataset, work, report_to, run_name=None):
        seen["work"], seen["out_exists"] = Path(work), out.exists()
        return real(cfg, model, tokenizer, dataset, work, report_to, run_name=run_name)

    monkeypatch.setattr(train_mod, "_make_trainer", spy)
    train_mod.train_reward_model(RMTrainConfig(base=str(tiny_policy_dir), data=[str(pairs_file)], objective="pairwise",
                                               out=out, epochs=1, max_length=64, eval_split=0, disable_tqdm=True))
    assert seen["out_exists"] is False
    assert seen["work"] != out and seen["work"].parent == out.parent and seen["work"].name.startswith(".rm.tmp-")
    assert not seen["work"].exists() and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("existing", [False, True])
def test_rm_train_disk_full_leaves_no_partial_model(monkeypatch, capsys, tmp_path, tiny_policy_dir, pairs_file,
                                                    existing):
    """The save fails after config.json and the weights are written: OUT must be absent (or as it was)."""
    out = tmp_path / "rm"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("old model")

    def full(self, directory):
        assert (Path(directory) / "config.json").is_file()  # midway: part of the model is already written
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(directory) / META_FILE))

    monkeypatch.setattr(RMMeta, "save", full)
    extra = ("--overwrite",) if existing else ()
    code, _, err = run_cli(monkeypatch, capsys, *train_args(tiny_policy_dir, pairs_file, out, *extra))
    assert code == 2
    one_error_line(err, str(out / META_FILE), "no space left on device")
    if existing:
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "old model"
    else:
        assert not out.exists()
    assert hidden_leftovers(tmp_path) == []


def test_rm_train_out_is_a_file_or_under_a_file_or_read_only(monkeypatch, capsys, tmp_path, tiny_policy_dir,
                                                             pairs_file):
    a_file = tmp_path / "afile"
    a_file.write_text("not a directory")
    code, _, err = run_cli(monkeypatch, capsys, *train_args(tiny_policy_dir, pairs_file, a_file))
    assert code == 2
    one_error_line(err, str(a_file), "existing file")
    assert a_file.read_text() == "not a directory"

    code, _, err = run_cli(monkeypatch, capsys, *train_args(tiny_policy_dir, pairs_file, a_file / "sub"))
    assert code == 2
    one_error_line(err, str(a_file / "sub"), "is a file, not a directory")

    # Read-only parent (root ignores chmod, so the refusal is simulated where the OS would raise it).
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **kw):
        if self.parent == ro:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, _, err = run_cli(monkeypatch, capsys, *train_args(tiny_policy_dir, pairs_file, ro / "rm"))
    assert code == 2
    one_error_line(err, str(ro), "permission denied")
    assert list(ro.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_rm_train_out_under_a_chmod_read_only_directory(monkeypatch, capsys, tmp_path, tiny_policy_dir, pairs_file):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, _, err = run_cli(monkeypatch, capsys, *train_args(tiny_policy_dir, pairs_file, ro / "rm"))
    finally:
        ro.chmod(0o700)
    assert code == 2
    one_error_line(err, "permission denied")


# ------------------------------------------------------------------------------------------ 15: missing base


@pytest.mark.parametrize("form", ["./nope", "nope-dir", "ABS"])
def test_rm_train_missing_base_names_the_path(monkeypatch, capsys, tmp_path, pairs_file, form):
    monkeypatch.chdir(tmp_path)
    base = str(tmp_path / "abs" / "nope") if form == "ABS" else form
    out = tmp_path / "rm"
    code, _, err = run_cli(monkeypatch, capsys, *train_args(base, pairs_file, out))
    assert code == 2
    one_error_line(err, f"base model not found: {base} (no such directory")
    assert not out.exists() and hidden_leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------- 17: all-tied groups


def ranked_rows(n: int, tied: set[int]) -> list[dict]:
    texts = corpus(3 * n, seed=4)
    return [{"id": f"g{i}", "prompt": f"question {i}", "responses": texts[3 * i: 3 * i + 3],
             "scores": [1.0, 1.0, 1.0] if i in tied else [2.0, 1.0, 0.0]} for i in range(n)]


def test_rm_train_every_group_tied_is_an_error_naming_a_group(monkeypatch, capsys, tmp_path, tiny_policy_dir):
    data = write_jsonl(tmp_path / "ranked.jsonl", ranked_rows(3, tied={0, 1, 2}))
    out = tmp_path / "rm"
    code, _, err = run_cli(monkeypatch, capsys, *train_args(tiny_policy_dir, data, out, objective="ranked"))
    assert code == 2
    one_error_line(err, f"{data}:1", "'g0'", "ties carry no preference", "scores")
    assert not out.exists()


def test_rm_train_one_tied_group_is_reported_by_file_line_and_id(caplog, tmp_path, tiny_policy_dir):
    from bonsynth.rm.train import RMTrainConfig, train_reward_model

    data = write_jsonl(tmp_path / "ranked.jsonl", ranked_rows(4, tied={2}))
    with caplog.at_level(logging.WARNING, logger="bonsynth.rm.train"):
        result = train_reward_model(RMTrainConfig(base=str(tiny_policy_dir), data=[str(data)], objective="ranked",
                                                  out=tmp_path / "rm", epochs=1, max_length=64, eval_split=0,
                                                  disable_tqdm=True))
    warnings = [r.getMessage() for r in caplog.records if "ties carry no preference" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"{data}:3" in warnings[0] and "'g2'" in warnings[0] and "question 2" in warnings[0]
    assert result["num_tied_groups"] == 1 and result["num_train_pairs"] == 3 * 3


# -------------------------------------------------------------------------- 6: an RM directory without tokenizer


def test_rm_without_tokenizer_is_an_error_naming_the_directory(monkeypatch, capsys, tmp_path, tiny_rm_dir):
    from bonsynth.rm.model import RewardModel

    rm = copy_without_tokenizer(tiny_rm_dir, tmp_path / "rm-notok")
    with pytest.raises(BonsynthError, match="has no tokenizer") as exc:
        RewardModel.load(rm, device="cpu")
    assert str(rm) in str(exc.value)

    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi", "response": "hello"}])
    out = tmp_path / "scored.jsonl"
    code, _, err = run_cli(monkeypatch, capsys, "rm", "score", "--model", str(rm), "--input", str(data),
                           "--output", str(out), "--device", "cpu")
    assert code == 2
    one_error_line(err, str(rm), "no tokenizer")
    assert not out.exists()


def test_rm_without_tokenizer_uses_its_recorded_base_model(caplog, tmp_path, tiny_rm_dir, tiny_policy_dir):
    """The fixtures share one tokenizer: with base_model recorded, rewards equal the original RM's."""
    from bonsynth.rm.model import RewardModel

    rm = copy_without_tokenizer(tiny_rm_dir, tmp_path / "rm-notok")
    meta = RMMeta.load(rm)
    meta.base_model = str(tiny_policy_dir)
    meta.save(rm)
    texts = corpus(5, seed=9)
    with caplog.at_level(logging.WARNING, logger="bonsynth.rm.model"):
        got = RewardModel.load(rm, device="cpu").score(texts)
    assert any("using the tokenizer of its base model" in r.getMessage() and str(tiny_policy_dir) in r.getMessage()
               for r in caplog.records)
    want = RewardModel.load(tiny_rm_dir, device="cpu").score(texts)
    assert got == pytest.approx(want, abs=1e-5)
    assert len(set(round(r, 5) for r in got)) > 1  # not the one reward of an empty encoding

    meta.base_model = str(tmp_path / "gone")
    meta.save(rm)
    with pytest.raises(BonsynthError, match="no tokenizer available locally either"):
        RewardModel.load(rm, device="cpu")


# ------------------------------------------------------------------------ 9: corrupted safetensors (RM, policy)


def truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@pytest.mark.parametrize("keep", [5, 40, -64], ids=["short-header-length", "cut-header", "cut-data"])
def test_corrupt_rm_safetensors_is_one_line_naming_the_file(monkeypatch, capsys, tmp_path, tiny_rm_dir, keep):
    rm = tmp_path / "rm-bad"
    shutil.copytree(tiny_rm_dir, rm)
    truncate(rm / "model.safetensors", keep)
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi", "response": "hello"}])
    out = tmp_path / "scored.jsonl"
    code, _, err = run_cli(monkeypatch, capsys, "rm", "score", "--model", str(rm), "--input", str(data),
                           "--output", str(out), "--device", "cpu")
    assert code == 2
    one_error_line(err, str(rm / "model.safetensors"), "not a valid safetensors file")
    assert not out.exists()


def generate_args(policy: Path, rm: Path, prompts: Path, out: Path) -> list[str]:
    return ["generate", "--policy", str(policy), "--reward", str(rm), "--prompts", str(prompts), "--out", str(out),
            "--backend", "hf", "--n", "2", "--max-new-tokens", "4", "--device", "cpu"]


def test_corrupt_policy_safetensors_is_one_line_naming_the_file(monkeypatch, capsys, tmp_path, tiny_policy_dir,
                                                                tiny_rm_dir, prompts_file):
    from bonsynth.generate.backends.hf import HFBackend

    policy = tmp_path / "policy-bad"
    shutil.copytree(tiny_policy_dir, policy)
    truncate(policy / "model.safetensors", 40)
    with pytest.raises(BonsynthError, match="not a valid safetensors file") as exc:
        HFBackend(str(policy), device="cpu")
    assert str(policy / "model.safetensors") in str(exc.value)
    out = tmp_path / "gen"
    code, _, err = run_cli(monkeypatch, capsys, *generate_args(policy, tiny_rm_dir, prompts_file, out))
    assert code == 2
    one_error_line(err, str(policy / "model.safetensors"))
    assert not out.exists()


# ------------------------------------------------------------------- 10: trust_remote_code needed but off


def custom_code_dir(src: Path, dst: Path) -> Path:
    """A model directory whose config maps to custom classes (nothing is ever imported or downloaded)."""
    shutil.copytree(src, dst)
    cfg = {"model_type": "custom_x", "auto_map": {"AutoConfig": "modeling_x.XConfig",
                                                  "AutoModelForCausalLM": "modeling_x.XForCausalLM",
                                                  "AutoModelForSequenceClassification": "modeling_x.XForReward"}}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_remote_code_needed_names_the_flag_and_what_it_means(monkeypatch, capsys, tmp_path, tiny_rm_dir,
                                                             tiny_policy_dir, pairs_file):
    from bonsynth.generate.backends.hf import HFBackend
    from bonsynth.rm.model import RewardModel

    rm = custom_code_dir(tiny_rm_dir, tmp_path / "rm-custom")
    policy = custom_code_dir(tiny_policy_dir, tmp_path / "policy-custom")
    for call in (lambda: RewardModel.load(rm, device="cpu"), lambda: HFBackend(str(policy), device="cpu")):
        with pytest.raises(BonsynthError, match="--trust-remote-code") as exc:
            call()
        assert "runs Python code from the model directory" in str(exc.value)

    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi", "response": "hello"}])
    code, _, err = run_cli(monkeypatch, capsys, "rm", "score", "--model", str(rm), "--input", str(data),
                           "--output", str(tmp_path / "s.jsonl"), "--device", "cpu")
    assert code == 2
    one_error_line(err, str(rm), "--trust-remote-code", "runs Python code", "modeling_x.XForReward")
    code, _, err = run_cli(monkeypatch, capsys, *train_args(policy, pairs_file, tmp_path / "rm-out"))
    assert code == 2
    one_error_line(err, str(policy), "--trust-remote-code", "runs Python code")
    assert not (tmp_path / "rm-out").exists()


# ---------------------------------------------------------------------------- 11: a policy without tokenizer


def test_policy_without_tokenizer_is_one_line_naming_the_directory(monkeypatch, capsys, tmp_path, tiny_policy_dir,
                                                                   tiny_rm_dir, prompts_file):
    from bonsynth.generate.backends.hf import HFBackend

    policy = copy_without_tokenizer(tiny_policy_dir, tmp_path / "policy-notok")
    with pytest.raises(BonsynthError, match="has no tokenizer") as exc:
        HFBackend(str(policy), device="cpu")
    assert str(policy) in str(exc.value)
    out = tmp_path / "gen"
    code, _, err = run_cli(monkeypatch, capsys, *generate_args(policy, tiny_rm_dir, prompts_file, out))
    assert code == 2
    one_error_line(err, str(policy), "no tokenizer")
    assert not out.exists()


# ------------------------------------------------------------------------- 5: non-finite rewards become null


def _strict(line: str) -> dict:
    def refuse(name: str):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(line, parse_constant=refuse)


@pytest.fixture()
def nan_rm_dir(tmp_path, tiny_rm_dir, tiny_tokenizer) -> tuple[Path, int]:
    """The tiny RM with one token's embedding set to NaN: every text containing that token scores NaN."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm_dir)
    token = tiny_tokenizer(" dragon", add_special_tokens=False)["input_ids"][-1]
    with torch.no_grad():
        model.get_input_embeddings().weight[token] = float("nan")
    out = tmp_path / "rm-nan"
    shutil.copytree(tiny_rm_dir, out)
    model.save_pretrained(out, safe_serialization=True)
    return out, token


def test_rm_score_writes_null_for_non_finite_rewards(monkeypatch, capsys, tmp_path, nan_rm_dir):
    rm, _ = nan_rm_dir
    rows = [{"prompt": "tell me", "response": "the dragon sails"}, {"prompt": "tell me", "response": "the ship sails"},
            {"prompt": "hi", "response": "a dragon"}]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "hi", "chosen": "a dragon", "rejected": "a ship"}])
    out = tmp_path / "scored.jsonl"
    code, stdout, err = run_cli(monkeypatch, capsys, "rm", "score", "--model", str(rm), "--input", str(data),
                                "--output", str(out), "--device", "cpu")
    assert code == 0, err
    assert stdout.strip().startswith(f"scored 3 records -> {out}; prefix sharing: ")
    assert stdout.strip().endswith("; 2 non-finite rewards written as null")
    got = [_strict(line) for line in out.read_text().splitlines()]
    assert got[0]["reward"] is None and got[2]["reward"] is None
    assert isinstance(got[1]["reward"], float) and math.isfinite(got[1]["reward"])

    code, stdout, err = run_cli(monkeypatch, capsys, "rm", "score", "--model", str(rm), "--input", str(pairs),
                                "--output", str(out), "--device", "cpu")
    assert code == 0, err
    assert "; 1 non-finite rewards written as null" in stdout
    (row,) = [_strict(line) for line in out.read_text().splitlines()]
    assert row["reward_chosen"] is None and row["reward_margin"] is None and math.isfinite(row["reward_rejected"])


def test_rm_score_line_is_unchanged_when_every_reward_is_finite(monkeypatch, capsys, tmp_path, tiny_rm_dir):
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi", "response": "hello"}])
    out = tmp_path / "scored.jsonl"
    code, stdout, _ = run_cli(monkeypatch, capsys, "rm", "score", "--model", str(tiny_rm_dir), "--input", str(data),
                              "--output", str(out), "--device", "cpu")
    assert code == 0 and stdout.strip() == f"scored 1 records -> {out}; prefix sharing: on"


# ----------------------------------------------------------------------- 24: rm calibrate, merge --calibrate-data


def independent_stats(rm_dir: Path, rows: list[dict]) -> tuple[float, float]:
    import numpy as np

    from bonsynth.rm.model import RewardModel

    items = [(r["prompt"], r[k]) for r in rows for k in ("chosen", "rejected")]
    rewards = np.array(RewardModel.load(rm_dir, device="cpu").score(items), dtype=np.float64)
    return float(rewards.mean()), float(rewards.std())


def test_rm_calibrate_stores_measured_mean_and_std(monkeypatch, capsys, tmp_path, tiny_rm_dir):
    rm = tmp_path / "rm"
    shutil.copytree(tiny_rm_dir, rm)
    rows = pairs_rows(6, seed=3)
    data = write_jsonl(tmp_path / "cal.jsonl", rows)
    code, stdout, err = run_cli(monkeypatch, capsys, "rm", "calibrate", str(rm), "--data", str(data), "--device", "cpu")
    assert code == 0, err
    mean, std = independent_stats(rm, rows)
    meta = RMMeta.load(rm)
    assert meta.reward_mean == pytest.approx(mean, abs=1e-6) and meta.reward_std == pytest.approx(std, rel=1e-6)
    assert meta.reward_stats_source == "calibrate:" + file_sha256(data) and meta.stats_measured
    assert meta.extra["calibration"]["num_texts"] == 12
    assert meta.objective == "pairwise"  # the rest of the file is kept
    assert "12 responses" in stdout and f"{mean:.6g}" in stdout and f"{std:.6g}" in stdout
    assert hidden_leftovers(rm) == []


def test_rm_calibrate_bad_data_changes_nothing(monkeypatch, capsys, tmp_path, tiny_rm_dir):
    rm = tmp_path / "rm"
    shutil.copytree(tiny_rm_dir, rm)
    before = (rm / META_FILE).read_text()
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}])
    for data in (prompts, tmp_path / "missing.jsonl"):
        code, _, err = run_cli(monkeypatch, capsys, "rm", "calibrate", str(rm), "--data", str(data), "--device", "cpu")
        assert code == 2
        one_error_line(err, str(data))
    assert (rm / META_FILE).read_text() == before


def test_rm_calibrate_refuses_nan_rewards(monkeypatch, capsys, tmp_path, nan_rm_dir):
    rm, _ = nan_rm_dir
    before = (rm / META_FILE).read_text()
    data = write_jsonl(tmp_path / "cal.jsonl", [{"prompt": "hi", "response": "a dragon"},
                                                {"prompt": "hi", "response": "a ship"}])
    code, _, err = run_cli(monkeypatch, capsys, "rm", "calibrate", str(rm), "--data", str(data), "--device", "cpu")
    assert code == 2
    one_error_line(err, "1 of 2 rewards", "not finite")
    assert (rm / META_FILE).read_text() == before


def merge_config_file(tmp_path: Path, rm_dir: Path) -> Path:
    import yaml

    cfg = {"merge_method": "linear", "models": [{"model": str(rm_dir), "parameters": {"weight": 1.0}}]}
    p = tmp_path / "merge.yml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_merge_records_unmeasured_stats_or_calibrates(monkeypatch, capsys, tmp_path, tiny_rm_dir):
    cfg = merge_config_file(tmp_path, tiny_rm_dir)
    plain = tmp_path / "merged"
    code, _, err = run_cli(monkeypatch, capsys, "merge", str(cfg), str(plain))
    assert code == 0, err
    meta = RMMeta.load(plain)
    assert meta.reward_stats_source == UNMEASURED and not meta.stats_measured
    assert (meta.reward_mean, meta.reward_std) == (0.0, 1.0)
    assert "unmeasured" in err and "rm calibrate" in err

    rows = pairs_rows(5, seed=8)
    data = write_jsonl(tmp_path / "cal.jsonl", rows)
    out = tmp_path / "merged-cal"
    code, stdout, err = run_cli(monkeypatch, capsys, "merge", str(cfg), str(out), "--calibrate-data", str(data))
    assert code == 0, err
    meta = RMMeta.load(out)
    mean, std = independent_stats(out, rows)
    assert meta.reward_mean == pytest.approx(mean, abs=1e-6) and meta.reward_std == pytest.approx(std, rel=1e-6)
    assert meta.reward_stats_source == "calibrate:" + file_sha256(data)
    assert "calibrated on 10 responses" in stdout
    assert hidden_leftovers(tmp_path) == []


def test_merge_calibrate_data_errors_leave_nothing(monkeypatch, capsys, tmp_path, tiny_rm_dir, tiny_policy_dir):
    import yaml

    cfg = merge_config_file(tmp_path, tiny_rm_dir)
    out = tmp_path / "merged"
    code, _, err = run_cli(monkeypatch, capsys, "merge", str(cfg), str(out), "--calibrate-data",
                           str(tmp_path / "missing.jsonl"))
    assert code == 2
    one_error_line(err, "missing.jsonl")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}])
    code, _, err = run_cli(monkeypatch, capsys, "merge", str(cfg), str(out), "--calibrate-data", str(prompts))
    assert code == 2
    one_error_line(err, str(prompts))  # calibration fails inside the temp dir: the merge is not published
    lm_cfg = tmp_path / "lm.yml"
    lm_cfg.write_text(yaml.safe_dump({"merge_method": "passthrough", "models": [{"model": str(tiny_policy_dir)}]}))
    data = write_jsonl(tmp_path / "cal.jsonl", pairs_rows(2))
    code, _, err = run_cli(monkeypatch, capsys, "merge", str(lm_cfg), str(out), "--calibrate-data", str(data))
    assert code == 2
    one_error_line(err, "does not produce a reward model")
    assert not out.exists() and hidden_leftovers(tmp_path) == []


def test_ensemble_warns_about_unmeasured_stats(caplog, tmp_path, tiny_rm_dir, tiny_rm2_dir):
    from bonsynth.rm.ensemble import RewardEnsemble

    merged = tmp_path / "merged"
    shutil.copytree(tiny_rm_dir, merged)
    meta = RMMeta.load(merged)
    meta.reward_stats_source = UNMEASURED
    meta.save(merged)
    with caplog.at_level(logging.WARNING, logger="bonsynth.rm.ensemble"):
        RewardEnsemble.load([str(merged), str(tiny_rm2_dir)], device="cpu")
    (msg,) = [r.getMessage() for r in caplog.records if "unmeasured" in r.getMessage()]
    assert "merged" in msg and "rm calibrate" in msg


# ------------------------------------------------------------------------------------ 12: merge output dir


def test_merge_out_is_a_file_or_under_a_file_or_read_only(monkeypatch, capsys, tmp_path, tiny_rm_dir):
    cfg = merge_config_file(tmp_path, tiny_rm_dir)
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    code, _, err = run_cli(monkeypatch, capsys, "merge", str(cfg), str(a_file))
    assert code == 2
    one_error_line(err, str(a_file), "existing file")
    code, _, err = run_cli(monkeypatch, capsys, "merge", str(cfg), str(a_file / "sub"))
    assert code == 2
    one_error_line(err, str(a_file / "sub"), "is a file, not a directory")
    assert a_file.read_text() == "x"

    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **kw):
        if self.parent == ro:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, _, err = run_cli(monkeypatch, capsys, "merge", str(cfg), str(ro / "merged"))
    assert code == 2
    one_error_line(err, str(ro), "permission denied")
    assert list(ro.iterdir()) == []


def test_merge_disk_full_while_writing_leaves_nothing(monkeypatch, capsys, tmp_path, tiny_rm_dir):
    from bonsynth.merge import engine

    cfg = merge_config_file(tmp_path, tiny_rm_dir)
    out = tmp_path / "merged"

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(dst) / "tokenizer.json"))

    monkeypatch.setattr(engine, "copy_tokenizer", full)
    code, _, err = run_cli(monkeypatch, capsys, "merge", str(cfg), str(out))
    assert code == 2
    one_error_line(err, str(out / "tokenizer.json"), "no space left on device")
    assert not out.exists() and hidden_leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------- the shared helper


def test_build_dir_atomic_replaces_whole_or_not_at_all(tmp_path):
    from bonsynth.outdir import build_dir_atomic

    out = tmp_path / "out"
    with build_dir_atomic(out) as work:
        (work / "a.txt").write_text("1")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError), build_dir_atomic(out, overwrite=True) as work:
        (work / "b.txt").write_text("2")
        raise RuntimeError("boom")
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with pytest.raises(BonsynthError, match="not empty"), build_dir_atomic(out):
        pass
    with build_dir_atomic(out, overwrite=True) as work:
        (work / "b.txt").write_text("2")
    assert [p.name for p in out.iterdir()] == ["b.txt"]
    assert hidden_leftovers(tmp_path) == []


def test_build_dir_atomic_names_a_native_writers_disk_full(tmp_path):
    """safetensors' Rust writer reports ENOSPC as its own exception type, "... (os error 28)"."""
    from bonsynth.outdir import build_dir_atomic

    out = tmp_path / "out"
    with pytest.raises(BonsynthError, match="no space left on device") as exc, build_dir_atomic(out) as work:
        (work / "config.json").write_text("{}")
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert str(out) in str(exc.value) and ".tmp-" not in str(exc.value)
    assert not out.exists() and hidden_leftovers(tmp_path) == []
