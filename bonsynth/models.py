"""Loading models and tokenizers safely (shared by the RM, the generators and the trainers).

Defaults follow our security rules: `trust_remote_code=False`, safetensors weights only unless the user
opts in. A path that does not exist and is not a plausible hub id is a clear user error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bonsynth.errors import BonsynthError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$|^[A-Za-z0-9][\w.-]*$")
# How to opt in to pickle weights, as the refusal says it (a caller with its own switch, e.g. a recipe, says its own).
UNSAFE_OPT_IN = "pass --allow-unsafe-weights (allow_unsafe_weights=True in Python)"


def check_model_source(path_or_id: str, *, what: str = "model", allow_unsafe_weights: bool = False,
                       opt_in: str = UNSAFE_OPT_IN) -> str:
    """Validate a local model directory (or accept a hub id) before any heavy loading."""
    p = Path(path_or_id)
    if p.exists():
        if not p.is_dir():
            raise BonsynthError(f"{what} path is not a directory: {path_or_id}")
        if not (p / "config.json").exists():
            raise BonsynthError(f"{what} directory has no config.json: {path_or_id}")
        check_weight_files(p, what=what, allow_unsafe_weights=allow_unsafe_weights, opt_in=opt_in)
        return str(p)
    looks_local = path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1
    if looks_local or not _HUB_ID.match(path_or_id):
        raise BonsynthError(f"{what} not found: {path_or_id}")
    return path_or_id


def check_weight_files(path: Path, *, what: str = "model", allow_unsafe_weights: bool = False,
                       opt_in: str = UNSAFE_OPT_IN) -> None:
    """Refuse a directory whose only weights are pickles unless the user opted in: unpickling can run code.

    The one weights check that the generators, the reward models and vLLM share. Safetensors anywhere in the
    directory win (loaders are told to use them); a directory with no weights at all is "not found".
    """
    if any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists():
        return
    pickles = sorted(f.name for f in path.iterdir() if f.suffix in (".bin", ".pt") and f.is_file())
    if (path / "pytorch_model.bin.index.json").exists():
        pickles.append("pytorch_model.bin.index.json")
    if not pickles:
        raise BonsynthError(f"{what} not found: {path} (no *.safetensors weights in the directory)")
    if not allow_unsafe_weights:
        names = ", ".join(pickles[:3]) + (f" and {len(pickles) - 3} more" if len(pickles) > 3 else "")
        raise BonsynthError(
            f"{what} at {path} has only pickle weights ({names}), which can run code when loaded; bonsynth "
            f"loads safetensors only. Convert them to safetensors, or {opt_in} if you trust the source"
        )


_DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


def dtype_name(dtype: str | Any) -> str:
    """The canonical name of a dtype spelling (`bf16`, `torch.bfloat16`, ...), or `auto`."""
    if dtype is None or str(dtype) == "auto":
        return "auto"
    name = _DTYPE_NAMES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise BonsynthError(f"unknown dtype '{dtype}' (use auto, float32, bfloat16 or float16)")
    return name


def resolve_device(device: str | Any = "auto") -> str:
    """'auto' -> the first CUDA GPU when there is one, else the CPU; a GPU asked for but absent is an error."""
    import torch

    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(str(device))
    except (RuntimeError, ValueError) as e:
        raise BonsynthError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BonsynthError(f"device '{device}' requested but no CUDA GPU is available (use --device cpu)")
    return str(dev)


def resolve_dtype(dtype: str | Any, device: str) -> Any:
    """'auto' -> bf16 on CUDA (fp16 on GPUs without bf16), fp32 on the CPU.

    fp32 on the CPU keeps results exact and the same on every CPU. Where the CPU multiplies bf16 in hardware
    (AVX512-BF16, AMX) `bfloat16` is 3-4x faster; that is an explicit choice (`--dtype bfloat16`).
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype_name(dtype)
    if name == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


def load_tokenizer(path_or_id: str, *, padding_side: str, trust_remote_code: bool = False):
    """A tokenizer with a pad token (the EOS token when it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok
