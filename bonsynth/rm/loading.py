"""Loading a saved reward model: the checks before any weight is read, the tokenizer's source, the head check.

Split from `bonsynth.rm.model` (which runs the model): every user error of loading (a missing directory, pickle
weights without the opt-in, remote code without trust, no tokenizer, no trained head, metadata of another
model) is one `BonsynthError` line raised here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonsynth.errors import BonsynthError
from bonsynth.modelref import is_hub_id
from bonsynth.models import (
    TOKENIZER_FILES,
    check_remote_code,
    check_tokenizer,
    check_weight_files,
    has_tokenizer_files,
    resolve_device,
    resolve_dtype,
)
from bonsynth.rm.meta import META_FILE, RMMeta

log = logging.getLogger("bonsynth.rm.model")  # the RM engine's logger, where its loading messages always went


@dataclass
class LoadedRM:
    """A loaded RM's parts, in eval mode on `device`, ready for `RewardModel`."""

    model: Any
    tokenizer: Any
    meta: RMMeta | None
    device: str
    dtype: Any
    path: str


def load_reward_model_parts(path: str | Path, *, device: str = "auto", dtype: str | Any = "auto",
                            trust_remote_code: bool = False, allow_unsafe_weights: bool = False) -> LoadedRM:
    """Model, tokenizer and `bonsynth_rm.json` of a saved RM (safetensors only unless `allow_unsafe_weights`)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bonsynth.modelref import resolve_model_ref

    path = resolve_model_ref(str(path))
    p = Path(path)
    local = p.exists()
    if local and not p.is_dir():
        raise BonsynthError(f"model not found: {path} (not a directory)")
    if not local and not is_hub_id(str(path)):
        raise BonsynthError(f"model not found: {path}")
    meta = None
    if local:
        _check_weights(p, allow_unsafe_weights)
        check_remote_code(p, trust_remote_code=trust_remote_code, what="reward model")
        meta = _load_meta(p)
    tok_source = _tokenizer_source(p, meta) if local else str(path)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype,
        "trust_remote_code": trust_remote_code,
        "use_safetensors": None if allow_unsafe_weights else True,
        "output_loading_info": True,
    }
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_source, trust_remote_code=trust_remote_code)
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(path), attn_implementation="sdpa", **kwargs
            )
        except (ValueError, ImportError, NotImplementedError):
            model, info = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if local or isinstance(e, ValueError):
            raise BonsynthError(f"cannot load reward model {path}: {reason}") from e
        raise BonsynthError(f"model not found: {path} (no such directory, and not on the Hub: {reason})") from e
    check_tokenizer(tokenizer, tok_source, what="reward model")
    missing = [k for k in info.get("missing_keys", []) if k.split(".")[0] in ("score", "classifier")]
    if missing:
        raise BonsynthError(
            f"{path} has no trained reward head (missing {', '.join(sorted(missing))}); "
            "train one with `bonsynth rm train`"
        )
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    model.to(dev)
    if meta is not None and meta.num_labels != int(getattr(model.config, "num_labels", 1)):
        raise BonsynthError(
            f"{p / META_FILE} says num_labels={meta.num_labels} but the model has "
            f"{model.config.num_labels}; the metadata does not belong to these weights"
        )
    return LoadedRM(model=model, tokenizer=tokenizer, meta=meta, device=dev, dtype=torch_dtype, path=str(path))


def _load_meta(path: Path) -> RMMeta | None:
    try:
        return RMMeta.load(path)
    except (ValueError, TypeError) as e:  # bad JSON, or fields of the wrong shape
        raise BonsynthError(f"{path / META_FILE} is not valid: {e}") from e


def _tokenizer_source(path: Path, meta: RMMeta | None) -> str:
    """Where the tokenizer of a local RM comes from: its own directory, else its recorded base model.

    Without tokenizer files transformers builds an empty stand-in (every text encodes to nothing, so every
    text gets the same reward): that is refused unless `bonsynth_rm.json` names a base model whose tokenizer
    is available locally, which is then used and said so.
    """
    if has_tokenizer_files(path):
        return str(path)
    base = meta.base_model if meta is not None else None
    if base:
        bp = Path(base).expanduser()
        if not bp.is_absolute() and not bp.exists() and (path / bp).exists():
            bp = path / bp  # a path relative to the RM directory
        if (bp.is_dir() and has_tokenizer_files(bp)) or (not bp.exists() and _cached_tokenizer(base)):
            source = str(bp) if bp.exists() else base
            log.warning("warning: reward model %s has no tokenizer files; using the tokenizer of its base model %s "
                        "(base_model in %s)", path, source, META_FILE)
            return source
        hint = f"; its base model {base} (base_model in {META_FILE}) has no tokenizer available locally either"
    else:
        hint = ""
    raise BonsynthError(
        f"reward model directory {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:5])}){hint}; copy "
        "the tokenizer files of the model it was trained from into it"
    )


def _cached_tokenizer(name: str) -> bool:
    """Whether a hub id's tokenizer is in the local cache (never a download)."""
    if not is_hub_id(name):
        return False
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return False
    return True


def _check_weights(path: Path, allow_unsafe_weights: bool) -> None:
    """A local RM directory needs config.json, then passes the weights check every loader shares."""
    if not (path / "config.json").exists():
        raise BonsynthError(f"model not found: {path} (no config.json in the directory)")
    check_weight_files(path, what="model", allow_unsafe_weights=allow_unsafe_weights)
