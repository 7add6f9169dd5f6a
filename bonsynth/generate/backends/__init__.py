"""Generation backends behind one small interface (`GenerationBackend`)."""

from __future__ import annotations

from bonsynth.errors import ConfigError
from bonsynth.generate.backends.base import (
    Completion,
    GenerationBackend,
    GenerationResult,
    SamplingConfig,
)

BACKENDS = ("auto", "vllm", "hf", "openai")


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def resolve_backend_name(name: str) -> str:
    """`auto` picks vLLM when it is installed and a CUDA GPU is present, else the hf backend."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name != "auto":
        return name
    import torch

    return "vllm" if vllm_available() and torch.cuda.is_available() else "hf"


def make_backend(name: str, model: str, **kw) -> GenerationBackend:
    """Build a backend by name. Keyword arguments are passed to the backend's constructor."""
    name = resolve_backend_name(name)
    if name == "hf":
        from bonsynth.generate.backends.hf import HFBackend

        return HFBackend(model, **kw)
    if name == "vllm":
        from bonsynth.generate.backends.vllm_backend import VLLMBackend

        return VLLMBackend(model, **kw)
    from bonsynth.generate.backends.openai_backend import OpenAIBackend

    return OpenAIBackend(model, **kw)


__all__ = [
    "BACKENDS",
    "Completion",
    "GenerationBackend",
    "GenerationResult",
    "SamplingConfig",
    "make_backend",
    "resolve_backend_name",
]
