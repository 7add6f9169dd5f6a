"""RewardModel: rewards equal an independent per-text computation, whatever the batching; truncation keeps
the response; pad == eos does not move the pooled token; loading refuses unsafe or headless checkpoints."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from bonsynth.batching import padded_tokens, token_budget_batches  # noqa: E402
from bonsynth.data.chat import render_pair  # noqa: E402
from bonsynth.demo.models import EOS, save_model, tiny_causal_lm, tiny_reward_model, train_tokenizer  # noqa: E402
from bonsynth.errors import BonsynthError  # noqa: E402
from bonsynth.rm.meta import RMMeta  # noqa: E402
from bonsynth.rm.model import RewardModel  # noqa: E402

CORPUS = [
    "Human: How do I bake bread? Assistant: Mix flour, water, salt and yeast, then knead and bake it.",
    "Human: What is the capital of France? Assistant: Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.",
] * 10

PAIRS = [
    ("Question: what is two plus two?", " Four."),
    ("Tell me a story about a fox.", " Once upon a time a quick brown fox jumped over a lazy dog" * 3),
    ("Hi", " Hello there, how can I help you today?"),
    ("Explain bread. " * 6, " Flour and water."),
    ([{"role": "user", "content": "What is the capital of France?"}], "Paris."),
    (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Bake bread?"},
            {"role": "assistant", "content": "Knead."},
            {"role": "user", "content": "Then?"},
        ],
        "Bake it in the sun",
    ),
    ("x", " y"),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads cost more than they save


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, vocab_size=320)


@pytest.fixture(scope="module")
def models(tok):
    return {n: tiny_reward_model(tok, num_labels=n, seed=n).eval() for n in (1, 2)}


def reference_reward(model, ids: list[int]) -> float:
    """One unpadded sequence through the HF model; the head read at the last token, computed by hand."""
    with torch.no_grad():
        hidden = model.transformer(input_ids=torch.tensor([ids])).last_hidden_state
        logits = model.score(hidden)[0, -1]
    return logits[0].item() if logits.numel() == 1 else (logits[1] - logits[0]).item()


@pytest.mark.parametrize("num_labels", [1, 2])
def test_rewards_match_unbatched_reference(tok, models, num_labels):
    model = models[num_labels]
    rm = RewardModel.from_model(model, tok)
    expected = []
    for prompt, response in PAIRS:
        p_text, r_text = render_pair(prompt, response, tok)
        ids = tok(p_text + r_text)["input_ids"]  # the split is at a token boundary for these texts
        assert rm.encode([(prompt, response)])[0].input_ids == ids
        expected.append(reference_reward(model, ids))
        with torch.no_grad():  # HF's own pooling agrees when the last token is not the pad token
            hf = model(input_ids=torch.tensor([ids])).logits[0]
        assert (hf[0] if num_labels == 1 else hf[1] - hf[0]).item() == pytest.approx(expected[-1], abs=1e-5)
    for budget in (1, 40, 97, 100_000):
        got = rm.score(PAIRS, token_budget=budget)
        assert got == pytest.approx(expected, abs=1e-5)
    assert rm.last_stats["num_batches"] < len(PAIRS) and rm.last_stats["num_truncated"] == 0


def test_order_and_batch_invariance_on_mixed_lengths(tok, models):
    rm = RewardModel.from_model(models[1], tok)
    texts = [("word " * (1 + (7 * i) % 23)).strip() for i in range(40)]
    one_by_one = [rm.score([t])[0] for t in texts]
    for budget in (8, 64, 300, 10_000):
        assert rm.score(texts, token_budget=budget) == pytest.approx(one_by_one, abs=1e-5)
    shuffled = texts[::-1]
    assert rm.score(shuffled) == pytest.approx(one_by_one[::-1], abs=1e-5)
    assert rm.score([]) == []


def test_token_budget_batches_cover_every_index_within_budget():
    lengths = [5, 50, 3, 3, 200, 17, 17, 1, 0, 64]
    batches = token_budget_batches(lengths, budget=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or padded_tokens(lengths, b) <= 64
    assert batches[0] == [4]  # longer than the budget: a batch of its own, first
    for b in token_budget_batches(lengths, budget=10_000):  # no row is more than half padding
        assert all(2 * max(lengths[i], 1) >= max(lengths[j] for j in b) for i in b)
    assert len(token_budget_batches(lengths, budget=10_000, min_fill=0.0)) == 1
    assert all(len(b) <= 3 for b in token_budget_batches(lengths, budget=10_000, max_batch_size=3, min_fill=0.0))
    with pytest.raises(ValueError):
        token_budget_batches(lengths, budget=0)


def test_truncation_keeps_the_response(tok, models):
    model = models[1]
    rm = RewardModel.from_model(model, tok, max_length=24)
    response = " Paris is the capital."
    resp_ids = tok(response, add_special_tokens=False)["input_ids"]
    items = [("blah " * 50, response), ("short", response), ("x " * 30, " " + "fox " * 40)]
    fed: list[list[int]] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: fed.extend(
            ids[: int(mask.sum())].tolist() for ids, mask in zip(kw["input_ids"], kw["attention_mask"], strict=True)
        ),
        with_kwargs=True,
    )
    try:
        rewards = rm.score(items, token_budget=24)  # one sequence per batch: `fed` follows length order
    finally:
        hook.remove()
    enc = rm.encode(items)
    assert sorted(map(tuple, fed)) == sorted(tuple(e.input_ids) for e in enc)
    long_prompt = enc[0]
    assert len(long_prompt) == 24 and long_prompt.truncated
    assert long_prompt.response_ids == resp_ids and long_prompt.input_ids[-len(resp_ids) :] == resp_ids
    assert tok("blah " * 50, add_special_tokens=False)["input_ids"][-len(long_prompt.prompt_ids) :] == long_prompt.prompt_ids
    assert not enc[1].truncated
    # A response longer than max_length alone keeps its end (the head reads the last token).
    full = tok(" " + "fox " * 40, add_special_tokens=False)["input_ids"]
    assert enc[2].prompt_ids == [] and enc[2].response_ids == full[-24:]
    assert rm.last_stats["num_truncated"] == 2
    assert rewards[0] == pytest.approx(reference_reward(model, long_prompt.input_ids), abs=1e-5)


def test_bos_from_the_tokenizer_or_the_chat_template_is_not_doubled(tok):
    """Llama-style: the tokenizer adds BOS, and the chat template writes one too; the model sees exactly one."""
    import copy

    from tokenizers.processors import TemplateProcessing

    btok = copy.deepcopy(tok)
    bos = btok.convert_tokens_to_ids(EOS)
    btok._tokenizer.post_processor = TemplateProcessing(single=f"{EOS} $A", special_tokens=[(EOS, bos)])
    btok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    model = tiny_reward_model(btok, num_labels=1, seed=4).eval()
    rm = RewardModel.from_model(model, btok)
    chat = [{"role": "user", "content": "Capital of France?"}]
    full = btok.apply_chat_template(chat + [{"role": "assistant", "content": "Paris."}], tokenize=False)
    enc = rm.encode([(chat, "Paris."), ("Plain prompt?", " Yes.")])
    assert enc[0].input_ids == btok(full, add_special_tokens=False)["input_ids"] and enc[0].input_ids.count(bos) == 1
    assert enc[1].input_ids == btok("Plain prompt? Yes.")["input_ids"]  # the BOS the tokenizer adds itself
    assert rm.encode(["whole text"])[0].input_ids == btok("whole text")["input_ids"]
    assert rm.encode([""])[0].input_ids == [bos]
    assert rm.score([(chat, "Paris.")]) == pytest.approx([reference_reward(model, enc[0].input_ids)], abs=1e-5)


def test_pad_equal_to_eos_reads_the_real_last_token(tok):
    """GPT-2 style: no pad token, pad := eos. A text ending in EOS must still be read at that EOS."""
    model = tiny_reward_model(tok, num_labels=1, seed=3).eval()
    model.config.pad_token_id = tok.eos_token_id
    rm = RewardModel.from_model(model, tok)
    assert rm.pad_id == tok.eos_token_id
    texts = ["Paris is the capital of France." + EOS, "Knead the bread and bake it in the sun please." + EOS, "fox"]
    expected = [reference_reward(model, tok(t)["input_ids"]) for t in texts]
    assert rm.score(texts) == pytest.approx(expected, abs=1e-5)
    # HF's own pooling skips the trailing EOS (it takes it for padding): the hazard is real.
    with torch.no_grad():
        hf = model(input_ids=torch.tensor([tok(texts[0])["input_ids"]])).logits[0, 0].item()
    assert abs(hf - expected[0]) > 1e-4


def test_probability_and_normalize(tok, models):
    meta = RMMeta(objective="binary", num_labels=2, reward_mean=0.25, reward_std=2.0)
    rm = RewardModel.from_model(models[2], tok, meta)
    texts = ["Paris.", "The fox sleeps in the sun.", "bread"]
    raw = rm.score(texts)
    assert rm.probability(texts) == pytest.approx([1 / (1 + math.exp(-r)) for r in raw], abs=1e-7)
    assert rm.score(texts, normalize=True) == pytest.approx([(r - 0.25) / 2.0 for r in raw], abs=1e-7)
    assert rm.score_pairs(["Hi", "Hi"], [" a", " b"]) == pytest.approx(rm.score([("Hi", " a"), ("Hi", " b")]))
    with pytest.raises(BonsynthError, match="prompts but"):
        rm.score_pairs(["Hi"], [" a", " b"])
    rm.meta.reward_std = 0.0
    with pytest.raises(BonsynthError, match="reward_std"):
        rm.score(texts, normalize=True)


def test_bad_items_and_heads(tok, models):
    rm = RewardModel.from_model(models[1], tok)
    with pytest.raises(BonsynthError, match="mix"):
        rm.score(["a text", ("prompt", " response")])
    with pytest.raises(BonsynthError, match="item 1"):
        rm.score(["a", 3])
    with pytest.raises(BonsynthError, match="list"):
        rm.score("a single string")
    with pytest.raises(BonsynthError, match="3 labels"):
        RewardModel.from_model(tiny_reward_model(tok, num_labels=3), tok)


def test_training_mode_is_restored_and_oom_halves_the_batch(tok, monkeypatch):
    model = tiny_reward_model(tok, num_labels=1, seed=5)  # fresh models are in training mode
    rm = RewardModel.from_model(model, tok)
    texts = ["word " * k for k in range(1, 13)]
    model.eval()
    expected = rm.score(texts)
    model.train()
    real_forward = rm._forward

    def flaky(batch):
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(batch)

    monkeypatch.setattr(rm, "_forward", flaky)
    assert rm.score(texts) == pytest.approx(expected, abs=1e-5)
    assert rm.last_stats["num_oom_retries"] >= 1 and rm.last_stats["num_batches"] >= 6
    assert model.training


def test_load_round_trip_and_meta(tok, models, tmp_path):
    out = save_model(models[2], tok, tmp_path / "rm")
    plain = RewardModel.load(out, device="cpu")
    assert plain.meta.objective == "unknown" and plain.max_length == 512  # model positions
    RMMeta(objective="binary", num_labels=2, max_length=64).save(out)
    rm = RewardModel.load(out)
    assert rm.device == "cpu" and rm.dtype == torch.float32 and rm.max_length == 64
    assert rm.meta.objective == "binary" and not rm.model.training
    ref = RewardModel.from_model(models[2], tok, max_length=64)
    assert rm.score(PAIRS) == pytest.approx(ref.score(PAIRS), abs=1e-5)
    assert rm.last_stats["num_truncated"] == ref.last_stats["num_truncated"] > 0
    assert RewardModel.load(out, max_length=32).max_length == 32
    with pytest.raises(BonsynthError, match="exceeds"):
        RewardModel.load(out, max_length=10_000)


def test_load_errors(tok, models, tmp_path, monkeypatch):
    with pytest.raises(BonsynthError, match="model not found"):
        RewardModel.load(tmp_path / "nope")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(BonsynthError, match="^model not found: runs/rm$"):  # a local path: no Hub lookup
        RewardModel.load("runs/rm")
    good = save_model(models[1], tok, tmp_path / "good")
    (good / "bonsynth_rm.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BonsynthError, match="bonsynth_rm.json is not valid"):
        RewardModel.load(good)
    RMMeta(objective="binary", num_labels=2).save(good)
    with pytest.raises(BonsynthError, match="num_labels=2 but the model has 1"):
        RewardModel.load(good)
    # A pickle-only checkpoint: refused unless the user opts in.
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    models[1].config.save_pretrained(unsafe)
    torch.save(models[1].state_dict(), unsafe / "pytorch_model.bin")
    tok.save_pretrained(unsafe)
    assert (unsafe / "pytorch_model.bin").exists() and not list(unsafe.glob("*.safetensors"))
    with pytest.raises(BonsynthError, match="allow_unsafe_weights=True"):
        RewardModel.load(unsafe)
    assert len(RewardModel.load(unsafe, allow_unsafe_weights=True).score(["hi"])) == 1
    # A causal LM has no reward head: scoring with a random one would be silently wrong.
    lm = save_model(tiny_causal_lm(tok), tok, tmp_path / "lm")
    with pytest.raises(BonsynthError, match="no trained reward head"):
        RewardModel.load(lm)


def test_text_classification_pipeline_agrees(tok, models, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = save_model(models[2], tok, tmp_path / "rm2")
    texts = ["Paris is the capital of France.", "Knead the bread.", "fox"]
    pipe = transformers.pipeline("text-classification", model=str(out), top_k=None, device="cpu")
    p_good = []
    for scores in pipe(texts):
        by_label = {s["label"]: s["score"] for s in scores}
        p_good.append(by_label["LABEL_1"])
    assert RewardModel.load(out).probability(texts) == pytest.approx(p_good, abs=1e-5)


def test_long_texts_raise_no_tokenizer_length_warning(tok, models, caplog):
    """bonsynth truncates itself (keeping the response), so transformers' "sequence length is longer than the
    specified maximum" warning is noise that a user would read as a problem: it must not be printed."""
    import copy

    import transformers

    short_tok = copy.deepcopy(tok)
    short_tok.model_max_length = 24
    rm = RewardModel.from_model(models[1], short_tok, max_length=24)
    transformers.logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            rewards = rm.score([("blah " * 50, " Paris is the capital.")])
    finally:
        transformers.logging.disable_propagation()
    assert len(rewards) == 1 and math.isfinite(rewards[0])
    assert not [r for r in caplog.records if "longer than the specified maximum" in r.getMessage()]
