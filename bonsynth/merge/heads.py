"""Tensor names across architectures of one family, and reward-model heads.

Names. A checkpoint of `XForCausalLM` / `XForSequenceClassification` / `XForMaskedLM` stores the shared body under
the class's `base_model_prefix` (`transformer.` for GPT-2, `model.` for Llama/Qwen/Mistral, `bert.` for BERT;
inferred from the names, see `infer_prefix`),
and its head outside it (`lm_head.weight`, `score.weight`, `classifier.*`, `cls.predictions.*`); a bare `XModel`
checkpoint stores the body without the prefix. Every input is read through a *canonical* body name (the prefix
removed), so a GPT2LMHeadModel base, a GPT2Model and GPT2ForSequenceClassification fine-tunes line up; the output is
written with the prefix convention of the output architecture. Layers are found as the numbered container
(`h.N.`, `layers.N.`, `encoder.layer.N.`) whose indices are exactly 0..num_layers-1.

Reward heads. When any input is a `...ForSequenceClassification`, the output is a 1-label one:
- a 2-label head (a thumbs-up classifier) becomes the scalar reward head: rows (w1 - w0, b1 - b0), so its reward
  is logit1 - logit0, the convention of `bonsynth_rm.json`; a 1-label head is kept; more labels is an error;
- a head tensor the base lacks (a plain LM base) is the weighted average of the fine-tuned heads (their
  `weight`s; equal weights for methods without one) - there is no base to take a delta from;
- the LM head of an LM input (`lm_head.weight`, BERT's `cls.predictions.*`) is deliberately left out: the
  classifier has no LM head, its vocabulary projection has no meaning for a reward, and the tied embedding stays
  in the body anyway. It is reported in the summary (`left_out`), never dropped silently.

Legacy buffers. Old checkpoints carry buffers that current transformers recomputes and ignores on load (hub
gpt2's `h.N.attn.bias` / `attn.masked_bias` causal masks, `rotary_emb.inv_freq`, BERT's `embeddings.position_ids`):
they are not weights, are not written, and are listed in the summary (`legacy_buffers_left_out`). This is what
lets the seed's sliced hub gpt2 (bare names, with masks) merge with RMs saved by current transformers (prefixed,
without masks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from bonsynth.errors import BonsynthError, ConfigError
from bonsynth.merge.io import ModelSource

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
CLASSIFIER_SUFFIX = "ForSequenceClassification"
_LAYER = re.compile(r"^(?P<container>.+?)\.(?P<idx>\d+)\.(?P<rest>.+)$")
# Buffers some old checkpoints saved (hub gpt2's `h.N.attn.bias`, Llama's `rotary_emb.inv_freq`, BERT's
# `position_ids`): current transformers recomputes them and does not load them, so they are not weights.
LEGACY_BUFFERS = re.compile(r"(\.attn\.(bias|masked_bias)|\.attention\.(bias|masked_bias)|rotary_emb\.inv_freq"
                            r"|embeddings\.(position_ids|token_type_ids))$")


def is_legacy_buffer(name: str, shape: tuple[int, ...]) -> bool:
    """A causal-mask buffer is 4-D ([1, 1, n, n]) or a scalar; a real `attn.bias` parameter would be 1-D."""
    m = LEGACY_BUFFERS.search(name)
    if not m:
        return False
    if "bias" in m.group(0):
        return len(shape) in (0, 4)
    return True
_PRE = re.compile(r"(^|\.)(wte|wpe|[a-z_]*emb[a-z_]*)(\.|$)")


def architecture(cfg: dict[str, Any]) -> str:
    archs = cfg.get("architectures") or []
    return str(archs[0]) if archs else ""


def is_classifier(cfg: dict[str, Any]) -> bool:
    return architecture(cfg).endswith(CLASSIFIER_SUFFIX)


def num_labels(cfg: dict[str, Any]) -> int:
    if cfg.get("id2label"):
        return len(cfg["id2label"])
    return int(cfg.get("num_labels") or 2)  # transformers' default, and not written to config.json


def layer_count(cfg: dict[str, Any]) -> tuple[str, int] | None:
    """(config key, number of layers), e.g. ("n_layer", 12) for GPT-2, ("num_hidden_layers", 32) for Llama."""
    for key in LAYER_COUNT_KEYS:
        if isinstance(cfg.get(key), int):
            return key, int(cfg[key])
    return None


def is_pre(canonical: str) -> bool:
    """Non-layer body tensors before the layers (embeddings) vs after them (final norm, pooler)."""
    return bool(_PRE.search(canonical))


def infer_prefix(names: list[str], want: int | None) -> str:
    """The base-model prefix of a checkpoint, from its names alone (no transformers import, no remote code).

    It is the first component of the layer container (`transformer` of `transformer.h`, `model` of
    `model.layers`, `bert` of `bert.encoder.layer`) when the embeddings live under it too; a bare model
    (`h.0.`, `layers.0.`, or BertModel's `encoder.layer.0.` beside `embeddings.`) has none.
    """
    container = _find_container(names, want)
    if not container or "." not in container:
        return ""
    prefix = container.split(".")[0]
    embeddings = [n for n in names if _PRE.search(n)]
    return prefix if any(n.startswith(prefix + ".") for n in embeddings) else ""


@dataclass
class Layout:
    """How one checkpoint's tensor names decompose into body (layers + other) and head."""

    prefix: str
    prefixed: bool
    container: str | None
    num_layers: int
    layers: dict[int, dict[str, str]] = field(default_factory=dict)  # idx -> rest -> original name
    other: dict[str, str] = field(default_factory=dict)  # canonical non-layer body name -> original name
    head: dict[str, str] = field(default_factory=dict)  # head name -> original name
    buffers: list[str] = field(default_factory=list)  # legacy buffers, not carried over (LEGACY_BUFFERS)


def _find_container(names: list[str], want: int | None) -> str | None:
    found: dict[str, set[int]] = {}
    for n in names:
        m = _LAYER.match(n)
        if m:
            found.setdefault(m["container"], set()).add(int(m["idx"]))
    if want is not None:
        exact = [c for c, idx in found.items() if idx == set(range(want))]
        return min(exact, key=len) if exact else None
    return max(found, key=lambda c: len(found[c])) if found else None


def analyze(src: ModelSource) -> Layout:
    """Split a model's tensor names; raises if the configured number of layers is not in the checkpoint."""
    all_names = list(src.tensors)
    buffers = [n for n in all_names if is_legacy_buffer(n, src.tensors[n].shape)]
    names = [n for n in all_names if n not in frozenset(buffers)] if buffers else all_names
    lc = layer_count(src.config)
    prefix = infer_prefix(names, lc[1] if lc else None)
    prefixed = bool(prefix) and any(n.startswith(prefix + ".") for n in names)
    body: dict[str, str] = {}
    head: dict[str, str] = {}
    for n in names:
        if prefixed:
            if n.startswith(prefix + "."):
                body[n[len(prefix) + 1:]] = n
            else:
                head[n] = n
        else:
            body[n] = n
    want = lc[1] if lc else None
    container = _find_container(list(body), want)
    if want is not None and want > 0 and container is None:
        raise ConfigError(
            f"model '{src.ref}': config says {want} layers ({lc[0] if lc else ''}) but no numbered layer block "
            "with indices 0..{} is in its weights".format(want - 1)
        )
    layout = Layout(prefix=prefix, prefixed=prefixed, container=container, num_layers=want or 0, head=head,
                    buffers=buffers)
    for canon, orig in body.items():
        m = _LAYER.match(canon)
        if container is not None and m and m["container"] == container:
            layout.layers.setdefault(int(m["idx"]), {})[m["rest"]] = orig
        else:
            layout.other[canon] = orig
    if want is None:
        layout.num_layers = len(layout.layers)
    return layout


def label_tensors(src: ModelSource, layout: Layout) -> dict[str, int]:
    """Head tensors whose first axis is the label axis of a classifier -> its number of labels."""
    n = num_labels(src.config)
    out = {h: n for h, orig in layout.head.items()
           if src.tensors[orig].shape and src.tensors[orig].shape[0] == n and len(src.tensors[orig].shape) in (1, 2)}
    if not out:
        shapes = {h: src.tensors[o].shape for h, o in layout.head.items()}
        raise ConfigError(
            f"model '{src.ref}' is a {architecture(src.config)} with {n} labels, but no head tensor has {n} rows "
            f"(head tensors: {shapes or 'none'})"
        )
    if n > 2:
        raise ConfigError(
            f"model '{src.ref}' has a {n}-label head; only 1-label reward heads and 2-label classifiers "
            "(reward = logit1 - logit0) can be merged into a scalar reward head"
        )
    return out


def to_scalar_head(t: torch.Tensor, labels: int, name: str) -> torch.Tensor:
    """A 2-label row pair (or bias pair) -> one row, row1 - row0: the log-odds of label 1, as a scalar reward."""
    if labels == 1:
        return t
    if labels == 2 and t.shape[0] == 2:
        return (t[1] - t[0]).unsqueeze(0)
    raise BonsynthError(f"cannot convert head tensor '{name}' of shape {tuple(t.shape)} to a scalar reward head")


def scalar_shape(shape: tuple[int, ...], labels: int) -> tuple[int, ...]:
    return (1, *shape[1:]) if labels == 2 else shape
