"""`bonsynth generate` under faults and bad input: one line and exit 2 for user errors, no duplicated rows, no
NaN on disk, no secrets in any file, every kill point resumable."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bonsynth.generate.pipeline import GenerateConfig, run_generate
from tests.conftest import corpus, run_bonsynth, write_jsonl


def _strict_rows(path: Path) -> list[dict]:
    """Rows parsed the way a strict JSON reader does: `NaN` / `Infinity` are errors, not numbers."""
    def refuse(token: str):
        raise ValueError(f"non-standard JSON constant {token} in {path}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _args(policy, rm, prompts, out, *extra: str) -> list[str]:
    return ["generate", "--policy", str(policy), "--reward", str(rm), "--prompts", str(prompts), "--out", str(out),
            "--backend", "hf", "--device", "cpu", "--n", "3", "--max-new-tokens", "8", "--seed", "4",
            "--batch-size", "2", "--quiet", *extra]


class _Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.exit_code, self.stdout, self.stderr = code, out, err


def _main(args: list[str]) -> _Result:
    """The CLI in-process, exactly as the `bonsynth` script runs it (user errors -> one line, exit 2)."""
    return _Result(*run_bonsynth(args))


def _one_error_line(res: _Result) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


@pytest.fixture()
def prompts6(tmp_path) -> Path:
    return write_jsonl(tmp_path / "p6.jsonl", [{"id": f"q{i}", "prompt": t} for i, t in enumerate(corpus(6, seed=3))])


# ----------------------------------------------------------------------------------------------- 1: the lock

_HOLD = """
import sys, time
from bonsynth.locks import dir_lock
with dir_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_run_on_a_locked_dir_exits_2_naming_the_pid_and_a_stale_lock_is_taken_over(
        tmp_path, tiny_policy_dir, tiny_rm_dir, prompts6):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = _main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, out, "--resume"))
        line = _one_error_line(res)
        assert f"pid {holder.pid}" in line and str(out) in line
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written by the refused run
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The killed holder's lock file is still there, but the kernel released it: the next run takes it over.
    assert (out / ".lock").exists()
    res = _main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, out, "--resume"))
    assert res.exit_code == 0, res.stderr
    assert [r["id"] for r in _strict_rows(out / "candidates.jsonl")] == [f"q{i}" for i in range(6)]


@pytest.mark.slow
def test_two_resumes_started_together_never_duplicate_rows(tmp_path, tiny_policy_dir, tiny_rm_dir):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"k{i}", "prompt": t} for i, t in enumerate(corpus(30, seed=5))])
    out = tmp_path / "out"
    args = _args(tiny_policy_dir, tiny_rm_dir, prompts, out, "--resume", "--select", "pairs")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "bonsynth", *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, err in results:
        assert code == 0 or (code == 2 and "in use by another bonsynth generate" in err), err
    assert any(code == 0 for code, _ in results)
    if any(code != 0 for code, _ in results):  # the refused one left everything to the other
        assert _main(args).exit_code == 0
    ids = [r["id"] for r in _strict_rows(out / "candidates.jsonl")]
    assert ids == [f"k{i}" for i in range(30)]
    dpo_ids = [r["id"] for r in _strict_rows(out / "dpo.jsonl")]
    assert len(dpo_ids) == len(set(dpo_ids))


# ----------------------------------------------------------------------------------------------- 2, 13: state

@pytest.mark.parametrize("resume", [False, True])
def test_kill_before_the_first_state_is_resumable(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts6, resume):
    ref = tmp_path / "ref"
    assert _main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, ref)).exit_code == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / ".state.json.4242.1a2b3c4d.tmp").write_text('{"config_fingerp')  # SIGKILL mid-write of the first state
    (out / "state.json.tmp").write_text('{"prompts')  # the name older versions used
    (out / ".lock").write_text("12345\n")
    res = _main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, out, *(["--resume"] if resume else [])))
    assert res.exit_code == 0, res.stderr
    for name in ("candidates.jsonl", "sft.jsonl", "dpo.jsonl"):
        assert (out / name).read_bytes() == (ref / name).read_bytes()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_a_foreign_file_in_out_is_still_refused(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts6):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = _one_error_line(_main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, out)))
    assert "not empty" in line and "notes.txt" in line
    assert (out / "notes.txt").read_text() == "mine"


def test_corrupt_state_json_names_the_file_and_what_to_do(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts6):
    out = tmp_path / "out"
    assert _main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, out)).exit_code == 0
    (out / "state.json").write_text('{\n  "prompts_done": 4,\n  "offsets": {oops}\n}\n')
    before = (out / "candidates.jsonl").read_bytes()
    line = _one_error_line(_main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, out, "--resume")))
    assert f"{out / 'state.json'}:3:" in line and "not valid JSON" in line and "another --out" in line
    (out / "state.json").write_text("[1, 2]")
    line = _one_error_line(_main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, out, "--resume")))
    assert "not a bonsynth run state" in line
    assert (out / "candidates.jsonl").read_bytes() == before


# ----------------------------------------------------------------------------------------------- 12, 14: paths, disk

def test_out_that_is_a_file_or_under_a_file_or_read_only(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts6, monkeypatch):
    f = tmp_path / "a_file"
    f.write_text("keep me")
    line = _one_error_line(_main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, f)))
    assert "exists and is not a directory" in line and str(f) in line
    line = _one_error_line(_main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, f / "sub")))
    assert "cannot create --out" in line and str(f / "sub") in line
    assert f.read_text() == "keep me"

    # A read-only parent (root ignores permission bits, so the refusal is simulated where mkdir asks the OS).
    ro = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def refuse(self, *a, **kw):
        if str(self).startswith(str(ro)):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", refuse)
    line = _one_error_line(_main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, ro / "out")))
    assert "Permission denied" in line and str(ro / "out") in line


def test_disk_full_mid_run_is_one_line_then_resume_is_byte_identical(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts6,
                                                                      monkeypatch):
    from bonsynth.generate import outputs

    ref = tmp_path / "ref"
    assert _main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, ref, "--write-pairs")).exit_code == 0
    out = tmp_path / "out"
    real = outputs.DurableWriter.append_batch
    calls = {"n": 0}

    def full_disk(self, rows, prompts_done):
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch: half of it reaches the file, then the disk is full
            fh = self.handles[outputs.CANDIDATES]
            fh.write(outputs.row_bytes(rows[outputs.CANDIDATES][:1])[:17])
            fh.flush()
            with outputs.io_errors(self.out / outputs.CANDIDATES):
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, rows, prompts_done)

    monkeypatch.setattr(outputs.DurableWriter, "append_batch", full_disk)
    line = _one_error_line(_main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, out, "--write-pairs")))
    assert f"{out / 'candidates.jsonl'}: No space left on device" in line and "--resume" in line
    monkeypatch.setattr(outputs.DurableWriter, "append_batch", real)
    res = _main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, out, "--write-pairs", "--resume"))
    assert res.exit_code == 0, res.stderr
    for name in ("candidates.jsonl", "sft.jsonl", "dpo.jsonl"):
        assert (out / name).read_bytes() == (ref / name).read_bytes()


# ----------------------------------------------------------------------------------------------- 5: NaN rewards

class _Poisoned:
    """A real RM ensemble whose rewards at chosen flat positions of each call are replaced by NaN or inf."""

    def __init__(self, inner, positions: dict[int, float]) -> None:
        self.inner, self.positions, self.calls = inner, positions, 0

    def score(self, prompts, responses):
        s = self.inner.score(prompts, responses)
        base = self.calls
        self.calls += len(responses)
        for pos, bad in self.positions.items():
            if base <= pos < base + len(responses):
                s.combined[pos - base] = bad
                for vals in s.per_model.values():
                    vals[pos - base] = bad
        return s

    def describe(self):
        return self.inner.describe()


def _poisoned_run(cfg: GenerateConfig, positions: dict[int, float]):
    from bonsynth.rm.ensemble import RewardEnsemble

    scorer = _Poisoned(RewardEnsemble.load(cfg.rewards, None, device="cpu"), positions)
    return run_generate(cfg, scorer=scorer)


def test_nonfinite_rewards_stop_the_run_by_default_and_leave_nothing(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts6):
    from bonsynth.errors import ConfigError

    out = tmp_path / "out"
    cfg = GenerateConfig(policy=str(tiny_policy_dir), rewards=[str(tiny_rm_dir)], prompts=str(prompts6), out=str(out),
                         n=3, backend="hf", max_new_tokens=8, seed=4, batch_size=2, device="cpu", show_progress=False)
    with pytest.raises(ConfigError, match=r"NaN/inf rewards \(1 of the run's 18 candidates.*--max-nonfinite"):
        _poisoned_run(cfg, {4: math.nan})
    assert not out.exists()


def test_nonfinite_rewards_are_counted_never_selected_and_written_as_null(tmp_path, tiny_policy_dir, tiny_rm_dir,
                                                                         prompts6):
    out = tmp_path / "out"
    cfg = GenerateConfig(policy=str(tiny_policy_dir), rewards=[str(tiny_rm_dir)], prompts=str(prompts6), out=str(out),
                         n=3, backend="hf", max_new_tokens=8, seed=4, batch_size=2, device="cpu", show_progress=False,
                         select="top-k:3", write_pairs=True, max_nonfinite=0.2)
    bad = {0: math.nan, 4: math.inf, 7: -math.inf}  # prompt 0 cand 0, prompt 1 cands 1 and ... (flat positions)
    manifest = _poisoned_run(cfg, bad)
    rows = _strict_rows(out / "candidates.jsonl")
    flat = [c for r in rows for c in r["candidates"]]
    assert [i for i, c in enumerate(flat) if c["reward"] is None] == sorted(bad)
    assert all(v is None for i in bad for v in flat[i]["rewards"].values())
    for r in rows:
        for i in r["selected"] + (r["pair"] or []):
            assert r["candidates"][i]["reward"] is not None
        assert len(r["selected"]) == sum(c["reward"] is not None for c in r["candidates"])
    for name in ("sft.jsonl", "dpo.jsonl", "candidates.jsonl"):
        text = (out / name).read_text()
        assert "NaN" not in text and "Infinity" not in text
        _strict_rows(out / name)
    json.loads((out / "manifest.json").read_text(), parse_constant=lambda t: pytest.fail(t))
    assert manifest["counts"]["nonfinite_rewards"] == 3
    finite = [c["reward"] for c in flat if c["reward"] is not None]
    assert manifest["summary"]["mean_reward_all"] == pytest.approx(sum(finite) / len(finite), rel=1e-12)

    # Over the allowed share (0.1 x 18 = 1.8): stops at the batch that crosses it, earlier batches durable.
    out2 = tmp_path / "out2"
    from bonsynth.errors import ConfigError

    cfg2 = GenerateConfig(**{**cfg.__dict__, "out": str(out2), "max_nonfinite": 0.1})
    with pytest.raises(ConfigError, match="NaN/inf"):
        _poisoned_run(cfg2, {0: math.nan, 13: math.nan})  # batch 1: 1 <= 1.8 allowed; batch 3: 2 > 1.8
    done = json.loads((out2 / "state.json").read_text())["prompts_done"]
    assert done == 4 and len(_strict_rows(out2 / "candidates.jsonl")) == 4


def test_a_broken_rm_through_the_cli_is_one_line(tmp_path, tiny_policy_dir, tiny_tokenizer, prompts6):
    import torch

    from bonsynth.demo.models import save_model, tiny_reward_model
    from bonsynth.rm.meta import RMMeta

    model = tiny_reward_model(tiny_tokenizer, num_labels=1, seed=11)
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    rm = save_model(model, tiny_tokenizer, tmp_path / "nan_rm")
    RMMeta(objective="pairwise").save(rm)
    out = tmp_path / "out"
    line = _one_error_line(_main(_args(tiny_policy_dir, rm, prompts6, out)))
    assert "NaN/inf rewards" in line and "--max-nonfinite" in line
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- 23, 25: flags

def test_select_modes_write_distinct_files(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts6):
    def run(name: str, *extra: str) -> tuple[int, int]:
        out = tmp_path / name
        res = _main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, out, *extra))
        assert res.exit_code == 0, res.stderr
        return len(_strict_rows(out / "sft.jsonl")), len(_strict_rows(out / "dpo.jsonl"))

    assert run("best") == (6, 0)
    sft, dpo = run("both", "--write-pairs")
    assert sft == 6 and dpo > 0
    assert run("pairs", "--select", "pairs") == (0, dpo)  # the same pairs, and no SFT rows
    assert "--min-margin" in _one_error_line(_main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, tmp_path / "x",
                                                         "--min-margin", "0.5")))
    help_text = _main(["generate", "--help"]).stdout
    assert "pairs: only a best-vs-worst DPO pair" in " ".join(help_text.split())


def test_reward_weights_with_one_rm_is_an_error(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts6):
    out = tmp_path / "out"
    line = _one_error_line(_main(_args(tiny_policy_dir, tiny_rm_dir, prompts6, out, "--reward-weights", "0.5")))
    assert "--reward-weights needs two or more --reward" in line
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- 7: secrets in URLs

def test_credentials_in_base_url_never_reach_disk_or_output(tmp_path, tiny_policy_dir, tiny_rm_dir, prompts6,
                                                            monkeypatch):
    from openai_gpt2_server import GPT2OpenAIServer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_policy_dir))
    tok = AutoTokenizer.from_pretrained(str(tiny_policy_dir))
    srv = GPT2OpenAIServer(model, tok).start()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-env-KEY-never-written-41")
        port = srv.base_url.split(":")[2].split("/")[0]
        url = f"http://alice:hunter2-PASSWORD@127.0.0.1:{port}/v1?api_key=QUERYTOKEN99&region=eu"
        out = tmp_path / "out"
        args = ["generate", "--policy", "tiny-gpt2", "--reward", str(tiny_rm_dir), "--prompts", str(prompts6),
                "--out", str(out), "--backend", "openai", "--base-url", url, "--n", "2", "--max-new-tokens", "4",
                "--device", "cpu", "--quiet"]
        res = _main(args)
        assert res.exit_code == 0, res.stderr
    finally:
        srv.stop()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["backend_options"]["base_url"] == f"http://127.0.0.1:{port}/v1?region=eu"
    texts = [res.stdout, res.stderr] + [p.read_text() for p in out.iterdir() if p.is_file()]
    for secret in ("hunter2-PASSWORD", "alice", "QUERYTOKEN99", "sk-env-KEY-never-written-41"):
        for text in texts:
            assert secret not in text
    cfg = GenerateConfig(policy="m", rewards=["r"], prompts="p", out="o", backend_options={"base_url": url})
    assert "hunter2" not in repr(cfg) and "QUERYTOKEN99" not in repr(cfg)


def test_redact_url_keeps_what_identifies_the_server():
    from bonsynth.redact import redact, redact_text, redact_url

    assert redact_url("https://u:p@api.example.com:8443/v1?key=1&model=x&access_token=2&sig=3") == \
        "https://api.example.com:8443/v1?model=x"
    assert redact_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"
    assert redact_text("failed at http://a:b@h/v1?token=z now") == "failed at http://h/v1 now"
    assert redact({"api_key": "sk-1", "nested": ["http://x:y@h/"], "n": 3}) == \
        {"api_key": "<redacted>", "nested": ["http://h/"], "n": 3}


def test_lock_holder_pid_is_written_and_refusal_is_quick(tmp_path):
    from bonsynth.errors import ConfigError
    from bonsynth.locks import dir_lock

    with dir_lock(tmp_path) as path:
        assert path.read_text().strip() == str(os.getpid())
        t = time.perf_counter()
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"), dir_lock(tmp_path):
            pass
        assert time.perf_counter() - t < 1.0
    with dir_lock(tmp_path):  # released on exit
        pass


# ----------------------------------------------------------------------------------------------- 19: --skip-invalid

def test_generate_skip_invalid_drops_bad_rows_and_records_them(tmp_path, tiny_policy_dir, tiny_rm_dir):
    good = [{"id": f"g{i}", "prompt": t} for i, t in enumerate(corpus(4, seed=8))]
    clean = write_jsonl(tmp_path / "clean.jsonl", good)
    dirty = write_jsonl(tmp_path / "dirty.jsonl", [good[0], {"id": "bad1", "prompt": ""}, good[1], good[2],
                                                    {"id": "bad2"}, good[3]])
    out = tmp_path / "out"
    line = _one_error_line(_main(_args(tiny_policy_dir, tiny_rm_dir, dirty, out)))
    assert f"{dirty}:2:" in line and "2 invalid rows" in line and "--skip-invalid" in line
    assert not out.exists()
    res = _main(_args(tiny_policy_dir, tiny_rm_dir, dirty, out, "--skip-invalid"))
    assert res.exit_code == 0, res.stderr
    assert f"skipped invalid row: {dirty}:2:" in res.stderr and f"{dirty}:5:" in res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["num_skipped_invalid"] == 2 and manifest["input"]["skipped_lines"] == [2, 5]
    ref = tmp_path / "ref"
    assert _main(_args(tiny_policy_dir, tiny_rm_dir, clean, ref)).exit_code == 0
    for name in ("candidates.jsonl", "sft.jsonl", "dpo.jsonl"):  # the same rows as a clean file gives
        assert (out / name).read_bytes() == (ref / name).read_bytes()
