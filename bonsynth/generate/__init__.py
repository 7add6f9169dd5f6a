"""Best-of-N generation: sample N completions per prompt, score them, select, write the run directory.

The public names, importable from here (loaded on first use, so `import bonsynth.generate` stays cheap):

- `GenerateConfig`, `run_generate`: the `bonsynth generate` pipeline (`pipeline`), `run_generate_ray` on Ray;
- `BestOfN`: the library API (`api`);
- `SamplingConfig`, `GenerationBackend`, `GenerationResult`, `Completion`, `make_backend`: the backends;
- `best_of_n_step`, `Scorer`: the one step every engine runs (`step`);
- `PromptSource`, `FilePrompts`: where the prompts come from; `summarize`: a run's reward summary.

(`gather.gather` stays in its module: a package attribute named like a submodule would be replaced by the
module as soon as that is imported.)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {
    "GenerateConfig": "pipeline",
    "run_generate": "pipeline",
    "run_generate_ray": "ray_engine",
    "BestOfN": "api",
    "SamplingConfig": "backends.base",
    "GenerationBackend": "backends.base",
    "GenerationResult": "backends.base",
    "Completion": "backends.base",
    "make_backend": "backends",
    "PromptSource": "prompts",
    "FilePrompts": "prompts",
    "summarize": "summary",
    "best_of_n_step": "step",
    "Scorer": "step",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{home}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
