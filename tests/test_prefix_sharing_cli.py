"""`--prefix-sharing` through the CLI: `rm score` says what ran, `auto` warns when it cannot share, `on` refuses.

An encoder RM (BERT) is the model that can never share: its head sees the whole sequence.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import corpus, write_jsonl


@pytest.fixture(scope="module")
def bert_rm_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from bonsynth.demo.models import save_model

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=1,
                     pad_token_id=tiny_tokenizer.pad_token_id)
    return save_model(BertForSequenceClassification(cfg).eval(), tiny_tokenizer, tmp_path_factory.mktemp("bert") / "rm")


@pytest.fixture()
def pairs(tmp_path) -> Path:
    prompts, responses = corpus(2, seed=21), corpus(6, seed=22)
    return write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": prompts[i // 3], "response": r}
                                                  for i, r in enumerate(responses)])


def _score(model: Path, pairs: Path, out: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bonsynth", "rm", "score", "--model", str(model), "--input",
                           str(pairs), "--output", str(out), "--device", "cpu", "--prefix-sharing", mode],
                          capture_output=True, text=True, timeout=300)


def _warnings(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.startswith("prefix sharing")]


@pytest.mark.slow
def test_rm_score_reports_what_ran(tmp_path, tiny_rm_dir, bert_rm_dir, pairs):
    r = _score(tiny_rm_dir, pairs, tmp_path / "gpt2.jsonl", "auto")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("; prefix sharing: on") and not _warnings(r.stderr)

    r = _score(bert_rm_dir, pairs, tmp_path / "bert.jsonl", "auto")
    assert r.returncode == 0, r.stderr
    reason = "no per-token score head (encoder-style classifier)"
    assert r.stdout.strip().endswith(f"; prefix sharing: off ({reason})")
    # one stderr line says why sharing fell back (the prompts repeat, so it would have run)
    assert _warnings(r.stderr) == [f"prefix sharing off: {reason} for reward model {bert_rm_dir}; "
                                   "scoring every pair in full"]
    assert len((tmp_path / "bert.jsonl").read_text().splitlines()) == 6

    r = _score(bert_rm_dir, pairs, tmp_path / "off.jsonl", "off")
    assert r.returncode == 0 and r.stdout.strip().endswith("; prefix sharing: off") and not _warnings(r.stderr)


@pytest.mark.slow
def test_rm_score_prefix_sharing_on_refuses_a_model_that_cannot_share(tmp_path, bert_rm_dir, pairs):
    out = tmp_path / "never.jsonl"
    r = _score(bert_rm_dir, pairs, out, "on")
    assert r.returncode == 2, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert "Traceback" not in r.stderr and len(errors) == 1, r.stderr
    assert str(bert_rm_dir) in errors[0] and "encoder-style classifier" in errors[0]
    assert "--prefix-sharing auto" in errors[0]
    assert not out.exists()


def test_generate_manifest_records_sharing_as_it_ran(tmp_path, monkeypatch, tiny_policy_dir, bert_rm_dir, tiny_rm_dir,
                                                     prompts_file):
    from bonsynth.generate.pipeline import GenerateConfig, run_generate

    cfg = GenerateConfig(policy=str(tiny_policy_dir), rewards=[str(tiny_rm_dir), str(bert_rm_dir)],
                         prompts=str(prompts_file), out=str(tmp_path / "o"), n=2, backend="hf", device="cpu",
                         max_new_tokens=4, limit=2, seed=1, show_progress=False)
    manifest = run_generate(cfg)
    got = [r["prefix_sharing"] for r in manifest["models"]["rewards"]]
    assert got == [{"requested": "auto", "active": True, "reason": None},
                   {"requested": "auto", "active": False, "reason": "no per-token score head (encoder-style classifier)"}]
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["models"]["rewards"][1]["prefix_sharing"] == got[1]

    from bonsynth.errors import ConfigError

    cfg.out, cfg.prefix_sharing = str(tmp_path / "on"), "on"
    with pytest.raises(ConfigError, match=f"reward model {bert_rm_dir} cannot share"):
        run_generate(cfg)
    assert not (tmp_path / "on").exists()
