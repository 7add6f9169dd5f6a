"""Shared fixtures: tiny models built from configs with a tokenizer trained on the spot (offline)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]

WORDS = (
    "the captain ship sails storm sea crew gold map island wizard spell tower potion knight dragon castle "
    "sword robot coffee station orbit star detective clue case rain city night friend hello thanks please "
    "yes no maybe i you we they are is was will can cannot help story tell me about your day"
).split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core CPU: OpenMP spin-waits and thread start-up cost more than the maths
    (the tiny server model runs ~50x faster on one thread on a busy CPU). Use per module with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from bonsynth.demo.models import train_tokenizer

    texts = corpus() + ["\n\nHuman: hi\n\nAssistant: hello", "\n\nSystem: be kind"]
    return train_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    from bonsynth.demo.models import save_model, tiny_causal_lm

    out = tmp_path_factory.mktemp("policy")
    return save_model(tiny_causal_lm(tiny_tokenizer, seed=1), tiny_tokenizer, out)


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    from bonsynth.demo.models import save_model, tiny_reward_model
    from bonsynth.rm.meta import RMMeta

    out = tmp_path_factory.mktemp("rm")
    save_model(tiny_reward_model(tiny_tokenizer, num_labels=1, seed=2), tiny_tokenizer, out)
    RMMeta(objective="pairwise", reward_mean=0.1, reward_std=2.0).save(out)
    return out


@pytest.fixture(scope="session")
def tiny_rm2_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 2-label classifier RM (thumbs-up style)."""
    from bonsynth.demo.models import save_model, tiny_reward_model
    from bonsynth.rm.meta import RMMeta

    out = tmp_path_factory.mktemp("rm2")
    save_model(tiny_reward_model(tiny_tokenizer, num_labels=2, seed=3), tiny_tokenizer, out)
    RMMeta(objective="binary", num_labels=2, label_mapping={"0": "bad", "1": "good"},
           reward_mean=-0.3, reward_std=0.5).save(out)
    return out


def pickle_copy(src: Path, dst: Path, auto_cls: str) -> Path:
    """`src` re-saved with pytorch_model.bin only (transformers 5 ignores `safe_serialization=False`)."""
    import shutil

    import torch
    import transformers

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    model = getattr(transformers, auto_cls).from_pretrained(src)
    torch.save(model.state_dict(), dst / "pytorch_model.bin")
    assert not list(dst.glob("*.safetensors"))
    return dst


def config_in_generation_child(monkeypatch, cfg):
    """The GenerateConfig that the loop's generation child (`bonsynth.generate.worker`) runs for `cfg`: the payload
    `run_generate_subprocess` sends on stdin, read back as the worker reads it (nothing runs)."""
    from types import SimpleNamespace

    from bonsynth.generate.worker import read_config
    from bonsynth.loop import runner

    sent = []
    monkeypatch.setattr(runner.subprocess, "run",
                        lambda cmd, **kw: sent.append((cmd, kw)) or SimpleNamespace(returncode=0))
    runner.run_generate_subprocess(cfg)
    ((cmd, kw),) = sent
    assert not any(cfg.out in part for part in cmd)  # the config goes on stdin, not the command line
    return read_config(kw["input"])


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def prompts_file(tmp_path) -> Path:
    texts = corpus(12, seed=5)
    return write_jsonl(tmp_path / "prompts.jsonl", [{"id": f"q{i}", "prompt": t} for i, t in enumerate(texts)])


@pytest.fixture()
def chat_prompts_file(tmp_path) -> Path:
    texts = corpus(6, seed=6)
    rows = [{"id": f"c{i}", "messages": [{"role": "system", "content": "You are a pirate."},
                                         {"role": "user", "content": t}]} for i, t in enumerate(texts)]
    return write_jsonl(tmp_path / "chat_prompts.jsonl", rows)


def sigkill_when(proc, cond, timeout: float = 120.0) -> bool:
    """SIGKILL `proc` as soon as `cond()` holds (polled every 5 ms, at most `timeout` s); wait for it either way.
    True when it was killed, False when it had already exited (the kill point came too late)."""
    import signal
    import time

    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline and not cond():
        time.sleep(0.005)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


def two_segments(backend, recs, sampling, first: int, second: int):
    """Pruning's two segments on a backend: every candidate's first `first` tokens (segment 0), then the ones
    still running continued `second` more (segment 1), each seeded as the pipeline seeds them. Returns
    (prepared prompts, the continuations asked for, their results)."""
    from bonsynth.generate.backends.base import Continuation
    from bonsynth.generate.seeding import segment_seed

    n, seed = sampling.n, sampling.seed
    prepared = backend.prepare(recs, sampling)
    firsts = backend.extend(prepared, [Continuation(prompt=i, seed=segment_seed(seed, r.id, j, 0))
                                       for i, r in enumerate(recs) for j in range(n)], sampling, first)
    items = [Continuation(prompt=k // n, seed=segment_seed(seed, recs[k // n].id, k % n, 1), tokens=e.tokens,
                          num_tokens=e.num_tokens) for k, e in enumerate(firsts) if e.finish_reason == "length"]
    assert items, "no candidate was still running after the first segment"
    return prepared, items, backend.extend(prepared, items, sampling, second)


def run_bonsynth(args: list[str]) -> tuple[int, str, str]:
    """The CLI in-process, exactly as the `bonsynth` script runs it (user errors -> one line, exit 2):
    (exit code, stdout, stderr)."""
    import contextlib
    import io
    import sys

    from bonsynth.cli import cli
    from bonsynth.cli.common import run_guarded

    out, err = io.StringIO(), io.StringIO()
    code, argv = 0, sys.argv
    sys.argv = ["bonsynth", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run_guarded(cli)
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()
