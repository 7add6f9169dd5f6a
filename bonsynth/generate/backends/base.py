"""The one small interface every generation backend implements.

A backend takes prompt records and sampling settings and returns, per prompt, N completions. It must seed
each prompt from `prompt_seed(sampling.seed, record.id)` so results do not depend on batching.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
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
    finish_reason: str  # "stop" (EOS or a stop string) or "length"; "pruned" for a candidate stopped early
    num_tokens: int
    # Speculative rejection (`bonsynth.generate.prune`): the token count at which this candidate was stopped,
    # and the rewards its partial text got there (its final rewards: it is not scored again). None otherwise.
    pruned_at: int | None = None
    pruned_reward: float | None = None
    pruned_rewards: dict[str, float] | None = None


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The text up to its earliest stop string, and whether one was found (what every backend returns)."""
    cut = min((k for k in (text.find(s) for s in stop) if k >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


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


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt as a backend will continue it, for segment-by-segment generation (pruning).

    `result` holds what `generate` reports about the prompt (text, token count, truncated, skipped) with no
    completions; `ids` are its token ids where the backend works on tokens (hf, vllm), else None (openai).
    """

    result: GenerationResult
    ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Continuation:
    """One candidate's next segment: continue prompt `prompt` (an index into the prepared prompts) after the
    candidate's kept `tokens` (token backends) or `text` (text backends), sampling with `seed`."""

    prompt: int
    seed: int
    tokens: tuple[int, ...] = ()
    text: str = ""
    num_tokens: int = 0


@dataclass(frozen=True)
class Extension:
    """A candidate after one more segment: all its tokens (kept + new; empty for text backends), its whole
    text so far, its token count so far, and "stop" (EOS / stop string) or "length" (the segment's end)."""

    tokens: tuple[int, ...]
    text: str
    num_tokens: int
    finish_reason: str


class GenerationBackend(ABC):
    """Generate N completions per prompt. Subclasses: hf, vllm, openai."""

    name: str = "base"

    @abstractmethod
    def generate(self, prompts: list[PromptRecord], sampling: SamplingConfig) -> list[GenerationResult]:
        """One result per prompt, in input order, each with `sampling.n` completions."""

    def prepare(self, prompts: list[PromptRecord], sampling: SamplingConfig) -> list[PreparedPrompt]:
        """Render and encode prompts once for `extend` (pruned generation); backends that can continue a
        partial reply override this and `extend`."""
        from bonsynth.errors import ConfigError

        raise ConfigError(f"--prune-at/--prune-keep are not supported by the {self.name} backend "
                          "(it cannot continue a partial reply); use the hf or vllm backend")

    def extend(self, prepared: list[PreparedPrompt], items: list[Continuation], sampling: SamplingConfig,
               max_new_tokens: int) -> list[Extension]:
        """Generate up to `max_new_tokens` more tokens for each item, each from its own seed, so an item's
        segment does not depend on the others in the call; one `Extension` per item, in order."""
        from bonsynth.errors import ConfigError

        raise ConfigError(f"--prune-at/--prune-keep are not supported by the {self.name} backend")

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
