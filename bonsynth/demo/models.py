"""Build demo-size models from scratch, offline.

Used by `bonsynth quickstart` (the policy and RM are trained on the sample data) and by the tests. The
models are ordinary HF models saved with `save_pretrained` (safetensors), so every later step loads them
through the same `from_pretrained` code path as a hub model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on `texts` (deterministic for the same texts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, unk_token=EOS)
    fast.model_max_length = 1024
    return fast


def gpt2_config(tokenizer, n_layer: int = 2, n_embd: int = 64, n_head: int = 2, n_positions: int = 512, **kw):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **kw,
    )


def tiny_causal_lm(tokenizer, seed: int = 0, **config_kw):
    """A randomly initialised GPT-2 causal LM sized for the CPU."""
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(gpt2_config(tokenizer, **config_kw))


def tiny_reward_model(tokenizer, num_labels: int = 1, seed: int = 0, **config_kw):
    """A randomly initialised GPT-2 sequence classifier (the RM shape bonsynth trains)."""
    import torch
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(seed)
    cfg = gpt2_config(tokenizer, num_labels=num_labels, **config_kw)
    return GPT2ForSequenceClassification(cfg)


def save_model(model, tokenizer, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
