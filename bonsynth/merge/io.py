"""Reading models tensor by tensor and writing sharded safetensors as the shards fill.

Inputs are opened with `safe_open` (memory-mapped) and only headers are read while planning; each tensor is then
read through a short-lived handle, so the mapping does not keep every page read so far resident. Peak RSS is
about one tensor per input model plus the output shard being filled, never whole models. Pickle weights
(`pytorch_model*.bin`) are refused unless the caller opts in (`allow_pickle`), and then loaded with
`torch.load(weights_only=True, mmap=True)`. Models are local paths; a hub id is fetched (safetensors, configs and
tokenizer files only) when the machine is online.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from bonsynth.errors import BonsynthError, ConfigError

TOKENIZER_FILES = (
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja",
    "chat_template.json",
)


def parse_size(value: str | int) -> int:
    """Shard size: an int, or a number with K/M/B (thousand, million, billion, as mergekit) or KB/MB/GB/KiB/MiB/GiB."""
    if isinstance(value, int):
        return value
    s = str(value).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", s)
    units = {"": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "b": 10**9, "g": 10**9, "gb": 10**9,
             "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    if not m or m.group(2).lower() not in units:
        raise ConfigError(f"bad shard size '{value}' (examples: 5B, 500M, 2GB, 1GiB)")
    size = int(float(m.group(1)) * units[m.group(2).lower()])
    if size <= 0:
        raise ConfigError(f"shard size must be positive, got '{value}'")
    return size


def resolve_model_dir(ref: str, *, allow_pickle: bool = False) -> Path:
    """A local directory for a model reference: the path itself (`demo:` names resolved), or a hub snapshot."""
    from bonsynth.modelref import is_hub_id, resolve_model_ref

    p = Path(resolve_model_ref(ref)).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ConfigError(f"model '{ref}' is a file, not a model directory")
    if not is_hub_id(ref, revision=True):
        raise ConfigError(f"model not found: '{ref}' (no such directory)")
    repo, _, revision = ref.partition("@")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ConfigError(f"model not found: '{ref}' is not a local directory and HF_HUB_OFFLINE is set")
    patterns = ["*.json", "*.safetensors", *TOKENIZER_FILES, "*.model", "*.txt", "*.jinja"]
    if allow_pickle:
        patterns.append("*.bin")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - any hub failure is "model not found" for the user
        raise ConfigError(
            f"model not found: '{ref}' is not a local directory, and fetching it from the Hugging Face Hub "
            f"failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})"
        ) from None


@dataclass
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: str


@dataclass
class ModelSource:
    """One input model: its config and a lazy, memory-mapped view of its tensors."""

    ref: str
    path: Path
    allow_pickle: bool = False
    _handles: dict[Path, Any] = field(default_factory=dict, repr=False)

    @cached_property
    def config(self) -> dict[str, Any]:
        f = self.path / "config.json"
        if not f.is_file():
            raise ConfigError(f"model '{self.ref}' has no config.json in {self.path}")
        try:
            return json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"model '{self.ref}': config.json is not valid JSON ({e})") from None

    @cached_property
    def weight_files(self) -> list[Path]:
        st = self._files("model.safetensors.index.json", "model.safetensors", "*.safetensors")
        if st:
            return st
        pickled = self._files("pytorch_model.bin.index.json", "pytorch_model.bin", "*.bin")
        if pickled and not self.allow_pickle:
            raise ConfigError(
                f"model '{self.ref}' has only pickle weights ({pickled[0].name}); bonsynth reads safetensors by "
                "default. Convert it to safetensors, or opt in with --allow-unsafe-weights (loaded with weights_only=True)"
            )
        if not pickled:
            raise ConfigError(f"model '{self.ref}' has no weights (*.safetensors) in {self.path}")
        return pickled

    def _files(self, index: str, single: str, pattern: str) -> list[Path]:
        idx = self.path / index
        if idx.is_file():
            try:
                weight_map = json.loads(idx.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ConfigError(f"model '{self.ref}': bad {index} ({e})") from None
            return [self.path / f for f in dict.fromkeys(weight_map.values())]
        if (self.path / single).is_file():
            return [self.path / single]
        return sorted(p for p in self.path.glob(pattern) if "adapter" not in p.name and "training_args" not in p.name)

    @cached_property
    def tensors(self) -> dict[str, TensorInfo]:
        """Name -> file, shape, dtype, from the headers only."""
        out: dict[str, TensorInfo] = {}
        for f in self.weight_files:
            if f.suffix == ".safetensors":
                with self._open(f) as h:
                    for name in h.keys():
                        sl = h.get_slice(name)
                        out[name] = TensorInfo(f, tuple(sl.get_shape()), str(sl.get_dtype()))
            else:
                for name, t in self._pickled(f).items():
                    out[name] = TensorInfo(f, tuple(t.shape), str(t.dtype))
        if not out:
            raise ConfigError(f"model '{self.ref}' has no tensors")
        return out

    def _open(self, f: Path) -> Any:
        """A fresh `safe_open` handle. Handles are not kept: a kept mapping would hold every page read so far
        in the resident set, while a closed one lets RSS fall back to the tensors actually alive."""
        from safetensors import safe_open

        if not f.is_file():
            raise ConfigError(f"model '{self.ref}': weight file {f.name} is missing")
        try:
            return safe_open(str(f), framework="pt", device="cpu")
        except Exception as e:  # noqa: BLE001 - a corrupt file is a user problem; name it
            raise BonsynthError(f"model '{self.ref}': cannot read {f.name} ({type(e).__name__}: {e})") from None

    def _pickled(self, f: Path) -> dict[str, torch.Tensor]:
        if f not in self._handles:
            try:
                self._handles[f] = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # noqa: BLE001
                raise BonsynthError(f"model '{self.ref}': cannot read {f.name} ({type(e).__name__}: {e})") from None
        return self._handles[f]

    def get(self, name: str) -> torch.Tensor:
        """One tensor. It may share memory with the file mapping: never modify it in place."""
        info = self.tensors.get(name)
        if info is None:
            raise BonsynthError(f"tensor '{name}' is missing from model '{self.ref}'")
        if info.file.suffix != ".safetensors":
            return self._pickled(info.file)[name]
        with self._open(info.file) as h:
            return h.get_tensor(name)

    def close(self) -> None:
        self._handles.clear()


class ShardWriter:
    """Write tensors into safetensors shards of at most `max_bytes` (a bigger single tensor gets its own shard).

    Shards are written as they fill; `finish` names them `model-0000i-of-0000N.safetensors` and writes
    `model.safetensors.index.json`, or renames a single shard to `model.safetensors`.
    """

    def __init__(self, out_dir: Path, max_bytes: int) -> None:
        self.out_dir = out_dir
        self.max_bytes = max_bytes
        self.current: dict[str, torch.Tensor] = {}
        self.current_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0
        self.num_parameters = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        t = tensor.detach().to("cpu").contiguous()
        if t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # a view of a bigger buffer: safetensors wants exactly its own bytes
        size = t.numel() * t.element_size()
        if self.current and self.current_bytes + size > self.max_bytes:
            self.flush()
        self.current[name] = t
        self.current_bytes += size
        self.total_bytes += size
        self.num_parameters += t.numel()

    def flush(self) -> None:
        if not self.current:
            return
        from safetensors.torch import save_file

        path = self.out_dir / f"shard-{len(self.shards):05d}.tmp.safetensors"
        save_file(self.current, str(path), metadata={"format": "pt"})
        self.shards.append((path, list(self.current)))
        self.current = {}
        self.current_bytes = 0

    def finish(self) -> int:
        """Write the last shard, name the shards and the index; returns the number of shards."""
        self.flush()
        n = len(self.shards)
        if n == 1:
            self.shards[0][0].rename(self.out_dir / "model.safetensors")
            return 1
        weight_map: dict[str, str] = {}
        for i, (path, names) in enumerate(self.shards, start=1):
            final = f"model-{i:05d}-of-{n:05d}.safetensors"
            path.rename(self.out_dir / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return n


def copy_tokenizer(src: Path, out_dir: Path) -> list[str]:
    """Copy the tokenizer files that exist in `src`; returns their names (empty: the model has no tokenizer)."""
    copied = []
    for name in TOKENIZER_FILES:
        f = src / name
        if f.is_file():
            shutil.copy2(f, out_dir / name)
            copied.append(name)
    return copied
