"""Loading models and tokenizers safely (shared by the RM, the generators and the trainers).

Defaults follow our security rules: `trust_remote_code=False`, safetensors weights only unless the user
opts in. A path that does not exist and is not a plausible hub id is a clear user error.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from bonsynth.errors import BonsynthError

# How to opt in to pickle weights, as the refusal says it (a caller with its own switch, e.g. a recipe, says its own).
UNSAFE_OPT_IN = "pass --allow-unsafe-weights (allow_unsafe_weights=True in Python)"
REMOTE_CODE_OPT_IN = "--trust-remote-code (trust_remote_code=True in Python)"
# Any one of these makes a directory hold a tokenizer (AutoTokenizer finds the rest from it).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")
_MAX_SAFETENSORS_HEADER = 100_000_000  # the format's own limit on the JSON header


def check_model_source(path_or_id: str, *, what: str = "model", allow_unsafe_weights: bool = False,
                       opt_in: str = UNSAFE_OPT_IN) -> str:
    """The loadable location of a model reference (`ModelRef.parse`: a checked local directory or a hub id)."""
    from bonsynth.modelref import ModelRef

    return ModelRef.parse(path_or_id, what=what, allow_unsafe_weights=allow_unsafe_weights, opt_in=opt_in).location


def check_weight_files(path: Path, *, what: str = "model", allow_unsafe_weights: bool = False,
                       opt_in: str = UNSAFE_OPT_IN) -> None:
    """Refuse a directory whose only weights are pickles unless the user opted in: unpickling can run code.

    The one weights check that the generators, the reward models and vLLM share. Safetensors anywhere in the
    directory win (loaders are told to use them); a directory with no weights at all is "not found".
    """
    shards = sorted(path.glob("*.safetensors"))
    if shards or (path / "model.safetensors.index.json").exists():
        for shard in shards:
            check_safetensors_file(shard, what=what)
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


def check_safetensors_file(path: Path, *, what: str = "model") -> None:
    """Read a safetensors header (8 bytes + JSON, no tensor data): a truncated or corrupted file is named here,
    in one line, instead of failing deep inside the loader."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError(f"{size} bytes, shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_SAFETENSORS_HEADER or 8 + n > size:
                raise ValueError(f"header of {n} bytes does not fit in the file's {size} bytes (truncated?)")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        data = size - 8 - n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            if not 0 <= begin <= end <= data:
                raise ValueError(f"tensor {name!r} ends at byte {end} of a {data}-byte data section (truncated?)")
    except OSError as e:
        raise BonsynthError(f"cannot read {what} weights {path}: {e.strerror or e}") from e
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        reason = f"missing {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
        raise BonsynthError(f"{what} weights file {path} is not a valid safetensors file: {reason}") from e


def check_remote_code(path: str | Path, *, trust_remote_code: bool, what: str = "model",
                      opt_in: str = REMOTE_CODE_OPT_IN) -> None:
    """A local model whose config (or tokenizer config) maps to custom classes needs its own Python code run.

    With that off, say so in one line instead of transformers' multi-line error (or a prompt on stdin).
    """
    if trust_remote_code:
        return
    p = Path(path)
    if not p.is_dir():
        return
    for name in ("config.json", "tokenizer_config.json"):
        f = p / name
        if not f.is_file():
            continue
        try:
            raw = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            if name == "config.json":
                raise BonsynthError(f"{what} config {f} is not valid JSON: {e}") from e
            continue
        auto_map = raw.get("auto_map") if isinstance(raw, dict) else None
        if auto_map:
            classes = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
            flat = sorted({str(c[0] if isinstance(c, list | tuple) else c) for c in classes})
            raise BonsynthError(
                f"{what} at {p} uses custom code ({name} auto_map: {', '.join(flat[:3])}); loading it runs Python "
                f"code from the model directory. Pass {opt_in} to allow that, only for a model you trust"
            )


def has_tokenizer_files(path: str | Path) -> bool:
    """Whether a local directory holds a tokenizer (without it, transformers may build an empty stand-in)."""
    p = Path(path)
    return any((p / f).is_file() for f in TOKENIZER_FILES)


def check_tokenizer(tok: Any, source: str | Path, *, what: str = "model") -> None:
    """A tokenizer that turns text into no tokens at all would give every text the same (empty) input."""
    try:
        ids = tok("hello world", add_special_tokens=False)["input_ids"]
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as e:
        raise BonsynthError(f"the tokenizer of {what} {source} cannot encode text: {e}") from e
    if not ids:
        raise BonsynthError(f"the tokenizer of {what} {source} encodes text to no tokens (an empty vocabulary?)")


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


def load_tokenizer(path_or_id: str, *, padding_side: str, trust_remote_code: bool = False, what: str = "model"):
    """A tokenizer with a pad token (the EOS token when it has none).

    A local directory without tokenizer files is a user error naming it (transformers would fail later with
    an IndexError, or build a tokenizer that encodes nothing).
    """
    from transformers import AutoTokenizer

    p = Path(path_or_id)
    if p.is_dir() and not has_tokenizer_files(p):
        raise BonsynthError(
            f"{what} directory {path_or_id} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:5])}); "
            "copy the tokenizer files of the model it was made from into it"
        )
    check_remote_code(path_or_id, trust_remote_code=trust_remote_code, what=what)
    try:
        tok = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BonsynthError(f"cannot load the tokenizer of {what} {path_or_id}: {reason}") from e
    check_tokenizer(tok, path_or_id, what=what)
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def checkpointing_args(enabled: bool) -> dict[str, bool]:
    """TrainingArguments for activation checkpointing, under the name the installed transformers uses.

    Always explicit: TRL's configs default it to True, which costs a second forward pass per step for nothing
    on the small models bonsynth trains by default. transformers 5.24 renamed `gradient_checkpointing` to
    `activation_checkpointing` (the old name goes in v6), so the new name is used where it exists.
    """
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing":
            bool(enabled)}
