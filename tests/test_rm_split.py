"""`rm/model.py` split (issue 14, item 6): one encoder and one logits-to-reward rule for both scorers.

`RewardModel` (HF) and `VLLMRewardScorer` (vLLM pooling) encode through `rm.encode.RMEncoder` and read
rewards through `rm.reward`; these tests check the vLLM scorer's side without starting an engine (its
logits are stubbed), so they run where vLLM is installed but cannot start (the engine tests are in
test_backend_vllm.py).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import torch

from bonsynth.errors import BonsynthError
from bonsynth.rm.encode import RMEncoder
from bonsynth.rm.meta import RMMeta
from bonsynth.rm.model import RewardModel
from bonsynth.rm.reward import check_num_labels, normalize_rewards, rewards_from_logits

PACKAGE = Path(__file__).resolve().parent.parent / "bonsynth"
ITEMS = [("Tell me a joke.", "Why did the chicken cross the road?"), ("Tell me a joke.", "No."),
         ([{"role": "user", "content": "hi"}], "hello " * 80)]  # the last one is truncated


def test_the_reward_rule_for_one_and_two_labels():
    logits = torch.tensor([[0.5, 2.0], [-1.0, -3.0]])
    assert rewards_from_logits(logits[:, :1], 1) == [0.5, -1.0]
    assert rewards_from_logits(logits, 2) == [1.5, -2.0]
    assert normalize_rewards([1.0, 3.0], RMMeta(objective="x", reward_mean=1.0, reward_std=2.0)) == [0.0, 1.0]
    with pytest.raises(BonsynthError, match="reward_std=0"):
        normalize_rewards([1.0], RMMeta(objective="x", reward_std=0.0))
    with pytest.raises(BonsynthError, match="3 labels"):
        check_num_labels(3)


def test_the_encoder_alone_encodes_as_the_reward_model(tiny_rm_dir):
    from transformers import AutoConfig, AutoTokenizer

    rm = RewardModel.load(tiny_rm_dir, device="cpu", max_length=40)
    enc = RMEncoder(AutoTokenizer.from_pretrained(tiny_rm_dir), AutoConfig.from_pretrained(tiny_rm_dir),
                    rm.meta, max_length=40)
    assert [e.input_ids for e in enc.encode(ITEMS)] == [e.input_ids for e in rm.encode(ITEMS)]
    assert [e.truncated for e in enc.encode(ITEMS)] == [False, False, True]
    assert (enc.max_length, enc.pad_id) == (rm.max_length, rm.pad_id)
    with pytest.raises(BonsynthError, match="exceeds the model's"):
        RMEncoder(rm.tokenizer, rm.model.config, rm.meta, max_length=10**6)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
@pytest.mark.parametrize("rm_fixture", ["tiny_rm_dir", "tiny_rm2_dir"])
def test_the_vllm_scorer_encodes_and_converts_logits_as_the_reward_model(request, rm_fixture, monkeypatch):
    """Same ids, and the same rewards (plain and normalised) from the same logits, with no engine started."""
    from bonsynth.rm.vllm_scorer import VLLMRewardScorer

    path = request.getfixturevalue(rm_fixture)
    hf = RewardModel.load(path, device="cpu", dtype="float32", max_length=40)
    scorer = VLLMRewardScorer(str(path), dtype="float32", max_length=40)
    assert scorer.token_ids(ITEMS) == [e.input_ids for e in hf.encode(ITEMS)]
    assert scorer.max_length == hf.max_length

    # the HF engine's own logits, fed to the vLLM scorer in place of the engine's
    with torch.no_grad():
        rows = [hf.model(input_ids=torch.tensor([ids])).logits[0].tolist() for ids in scorer.token_ids(ITEMS)]
    monkeypatch.setattr(VLLMRewardScorer, "logits", lambda self, items: rows)
    assert scorer.score(ITEMS) == pytest.approx(hf.score(ITEMS), abs=1e-5)
    assert scorer.score(ITEMS, normalize=True) == pytest.approx(hf.score(ITEMS, normalize=True), abs=1e-5)
    assert not scorer._engine.started


def test_the_vllm_scorer_borrows_no_reward_model_internals():
    """Before: `_Encoder` took four `RewardModel` methods as class attributes and faked `self.model`."""
    tree = ast.parse((PACKAGE / "rm" / "vllm_scorer.py").read_text(encoding="utf-8"))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "RewardModel" not in names | imported and "SimpleNamespace" not in names | imported
    assert {"RMEncoder", "rewards_from_logits", "normalize_rewards"} <= imported
