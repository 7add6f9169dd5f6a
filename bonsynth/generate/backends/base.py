"""The one small interface every generation backend implements.

A backend takes prompt records and sampling settings and returns, per prompt, N completions. It must seed
each prompt from `prompt_seed(sampling.seed, record.id)` so results do not depend on batching.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

from bonsynth.data.records import PromptRecord


@dataclass(frozen=True)
class SamplingConfig:
    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0
    stop: tuple[str, ...] = ()
    # A prompt longer than the model's context minus max_new_tokens is "truncate"d from the left, or
    # "skip"ped; either way it is reported in the outputs, never dropped silently.
    long_prompt: str = "truncate"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    num_tokens: int


def normalize_finish_reason(reason: str | None) -> str:
    """An engine's finish reason as bonsynth's two: 'length' (vLLM and OpenAI 'length', Anthropic-style
    'max_tokens') stays 'length'; EOS, stop strings, 'abort' and the rest are 'stop'."""
    return "length" if reason in ("length", "max_tokens") else "stop"


@dataclass(frozen=True)
class GenerationResult:
    prompt_text: str  # the exact text the model continued (after the chat template)
    prompt_tokens: int
    completions: tuple[Completion, ...] = field(default_factory=tuple)
    prompt_truncated: bool = False  # left-truncated to fit the context
    skipped: str | None = None  # why no completions were generated (e.g. "prompt-too-long")


class GenerationBackend(ABC):
    """Generate N completions per prompt. Subclasses: hf, vllm, openai."""

    name: str = "base"

    @abstractmethod
    def generate(self, prompts: list[PromptRecord], sampling: SamplingConfig) -> list[GenerationResult]:
        """One result per prompt, in input order, each with `sampling.n` completions."""

    def describe(self) -> dict:
        """What goes into the manifest about this backend (model path, engine version, ...)."""
        return {"backend": self.name}

    def close(self) -> None:
        """Free the engine (GPU memory) so that a later step can use the device."""
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
