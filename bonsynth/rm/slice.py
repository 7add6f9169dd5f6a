"""`bonsynth rm slice`: keep a range of layers of a model; literally a passthrough merge.

`slice_model(base, "0:8", out)` builds the config

    merge_method: passthrough
    slices:
      - sources:
          - model: BASE
            layer_range: [0, 8]

and runs the merge engine on it, so slicing and `bonsynth merge` share every rule: the config's layer count
(`n_layer`, `num_hidden_layers`, ...) and per-layer lists (`layer_types`, ...) are cut to the kept layers,
embeddings and the final norm/head are kept, and the tokenizer is saved with the model (required here).
The first 8 of gpt2's 12 layers: 38.6M embedding + 0.8M position + 8 x 7.09M layer parameters, about 96M.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bonsynth.errors import ConfigError

_RANGE = re.compile(r"^\s*(\d*)\s*:\s*(\d+)\s*$")


def parse_layers(layers: str) -> tuple[int, int]:
    """`START:END` (END exclusive; START defaults to 0), e.g. `0:8` or `:8`."""
    m = _RANGE.match(str(layers))
    if not m:
        raise ConfigError(f"--layers must be START:END (END exclusive), e.g. 0:8; got '{layers}'")
    start, end = int(m.group(1) or 0), int(m.group(2))
    if end <= start:
        raise ConfigError(f"--layers {layers}: END must be greater than START")
    return start, end


def slice_config(base: str, start: int, end: int) -> dict[str, Any]:
    return {
        "merge_method": "passthrough",
        "slices": [{"sources": [{"model": str(base), "layer_range": [start, end]}]}],
    }


def slice_model(base: str, layers: str, out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Keep layers START:END of `base` and save model, config and tokenizer to `out`.

    A non-empty `out` is refused unless `overwrite`; the new directory replaces it only once complete.

    Returns the merge summary, whose `num_layers` and `num_parameters` describe the sliced model.
    """
    import yaml

    from bonsynth.merge.config import parse_config
    from bonsynth.merge.engine import MergeOptions, merge_config

    start, end = parse_layers(layers)
    data = slice_config(base, start, end)
    cfg = parse_config(data, "slice")
    return merge_config(cfg, out, MergeOptions(overwrite=overwrite, require_tokenizer=True),
                        config_text=yaml.safe_dump(data, sort_keys=False))
