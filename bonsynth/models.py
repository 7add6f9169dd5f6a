"""Loading models and tokenizers safely (shared by the RM, the generators and the trainers).

Defaults follow our security rules: `trust_remote_code=False`, safetensors weights only unless the user
opts in. A path that does not exist and is not a plausible hub id is a clear user error.
"""

from __future__ import annotations

import re
from pathlib import Path

from bonsynth.errors import BonsynthError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$|^[A-Za-z0-9][\w.-]*$")


def check_model_source(path_or_id: str, *, what: str = "model", allow_unsafe_weights: bool = False) -> str:
    """Validate a local model directory (or accept a hub id) before any heavy loading."""
    p = Path(path_or_id)
    if p.exists():
        if not p.is_dir():
            raise BonsynthError(f"{what} path is not a directory: {path_or_id}")
        if not (p / "config.json").exists():
            raise BonsynthError(f"{what} directory has no config.json: {path_or_id}")
        has_safe = any(p.glob("*.safetensors"))
        has_unsafe = any(p.glob("*.bin")) or any(p.glob("*.pt"))
        if not has_safe and has_unsafe and not allow_unsafe_weights:
            raise BonsynthError(
                f"{what} at {path_or_id} has only pickle (.bin/.pt) weights; bonsynth loads safetensors only. "
                "Convert it, or opt in with --allow-unsafe-weights if you trust the file."
            )
        return str(p)
    looks_local = path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1
    if looks_local or not _HUB_ID.match(path_or_id):
        raise BonsynthError(f"{what} not found: {path_or_id}")
    return path_or_id


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str):
    """`auto` = bf16 on a GPU (fp16 where bf16 is unsupported), fp32 on the CPU."""
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in table:
        raise BonsynthError(f"unknown dtype {dtype!r}; choose auto, float32, bfloat16 or float16")
    return table[dtype]


def load_tokenizer(path_or_id: str, *, padding_side: str, trust_remote_code: bool = False):
    """A tokenizer with a pad token (the EOS token when it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok
