"""An LLM as the gold judge, over any OpenAI-compatible server (`--judge openai:MODEL`).

Requests go through `OpenAIBackend` itself (one chat request per judgement, temperature 0), so the judge gets
the same client, concurrency limit, retries with backoff, and key handling: the key is read from the
environment ($OPENAI_API_KEY) when requests are made, sent only in the Authorization header, and masked out
of every error; the report records the base URL through `redact_url`.

Two modes:
- `pointwise`: each candidate gets a score (default template: 1 to 10) and is treated like an RM reward, so
  the whole best-of-n curve is computed from it.
- `pairwise`: the proxy's best-of-N pick is compared with each other candidate of its prompt, one request per
  pair, the pick shown as A for odd candidate indices and as B for even ones (position bias cancels out over
  a prompt). This gives the gold win rate of the pick; there is no curve, which would need every pair.

The template is a text file with `{prompt}` and `{response}` (pointwise) or `{response_a}` and `{response_b}`
(pairwise); replace it with `--judge-prompt FILE`. An answer the parser cannot read is counted (`unparsable`)
and left out, never guessed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from bonsynth.data.chat import render_prompt
from bonsynth.data.records import PromptRecord
from bonsynth.errors import ConfigError, io_errors
from bonsynth.rm.ensemble import EnsembleScores

PREFIX = "openai:"
MODES = ("pointwise", "pairwise")
PROMPTS_DIR = Path(__file__).parent / "prompts"
PLACEHOLDERS = {"pointwise": ("{prompt}", "{response}"), "pairwise": ("{prompt}", "{response_a}", "{response_b}")}
_SCORE = re.compile(r"^\s*\**\s*score\s*\**\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\**\s*\.?\s*$",
                    re.IGNORECASE | re.MULTILINE)
_BARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\.?\s*$")
_WINNER = re.compile(r"^\s*\**\s*winner\s*\**\s*[:=]\s*\**\s*(a|b|tie)\b", re.IGNORECASE | re.MULTILINE)


def is_llm_judge(spec: str) -> bool:
    return spec.startswith(PREFIX)


def load_template(mode: str, path: str | None) -> str:
    """The judge prompt template (the shipped default for `mode`, or the user's file), checked for its slots."""
    if mode not in MODES:
        raise ConfigError(f"--judge-mode must be pointwise or pairwise (got {mode!r})")
    file = Path(path) if path else PROMPTS_DIR / f"{mode}.txt"
    if not file.is_file():
        raise ConfigError(f"--judge-prompt {file}: no such file")
    with io_errors(file):
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"--judge-prompt {file}: not UTF-8 text") from None
    missing = [p for p in PLACEHOLDERS[mode] if p not in text]
    if missing:
        raise ConfigError(f"--judge-prompt {file}: the {mode} template needs {' and '.join(missing)}")
    return text


def fill(template: str, **slots: str) -> str:
    """The template with its `{name}` slots filled in one pass (braces inside the texts stay as they are)."""
    return re.sub(r"\{(" + "|".join(map(re.escape, slots)) + r")\}", lambda m: slots[m.group(1)], template)


def parse_score(answer: str, lo: float = 1.0, hi: float = 10.0) -> float | None:
    """The score in a `Score: N` line (or an answer that is just N), within [lo, hi]; None otherwise."""
    m = _SCORE.search(answer) or _BARE.match(answer)
    if not m:
        return None
    value = float(m.group(1))
    return value if lo <= value <= hi and math.isfinite(value) else None


def parse_winner(answer: str) -> str | None:
    """'a', 'b' or 'tie' from a `Winner: X` line; None otherwise."""
    m = _WINNER.search(answer)
    return m.group(1).lower() if m else None


class LLMJudge:
    """Scores (prompt, response) pairs with a chat model; NaN for answers it cannot parse (counted)."""

    def __init__(self, model: str, *, mode: str = "pointwise", template: str | None = None,
                 base_url: str | None = None, concurrency: int = 8, max_tokens: int = 16,
                 api_key_env: str = "OPENAI_API_KEY", **backend_kw) -> None:
        from bonsynth.generate.backends.base import SamplingConfig
        from bonsynth.generate.backends.openai_backend import OpenAIBackend

        if not model:
            raise ConfigError("--judge openai:MODEL needs a model name after 'openai:'")
        self.mode = mode
        self.template = load_template(mode, template)
        self.template_path = template
        self.backend = OpenAIBackend(model, base_url=base_url, endpoint="chat", concurrency=concurrency,
                                     api_key_env=api_key_env, **backend_kw)
        self.sampling = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_tokens, seed=0)
        self.name = f"{PREFIX}{model}"
        self.unparsable = 0
        self.requests = 0

    def _ask(self, texts: list[str]) -> list[str]:
        recs = [PromptRecord(id=f"judge-{self.requests + i}", prompt=[{"role": "user", "content": t}])
                for i, t in enumerate(texts)]
        self.requests += len(recs)
        results = self.backend.generate(recs, self.sampling)
        return [res.completions[0].text if res.completions else "" for res in results]

    def score(self, prompts, responses) -> EnsembleScores:
        """Pointwise scores, in input order; NaN where the answer could not be parsed."""
        asks = [fill(self.template, prompt=render_prompt(p), response=r)
                for p, r in zip(prompts, responses, strict=True)]
        scores = []
        for answer in self._ask(asks):
            s = parse_score(answer)
            if s is None:
                self.unparsable += 1
            scores.append(math.nan if s is None else s)
        return EnsembleScores(combined=scores, per_model={self.name: scores})

    def compare(self, items: list[tuple[object, str, list[tuple[int, str]]]]) -> list[list[float | None]]:
        """For each (prompt, pick, others): per other candidate (index, text), 1 if the pick wins, 0.5 on a tie,
        0 if it loses, None if unparsable. All pairs go out in one concurrent batch.

        The pick is response A against odd indices and B against even ones, so its position alternates.
        """
        asks, where = [], []
        for k, (prompt, pick, others) in enumerate(items):
            shown = render_prompt(prompt)
            for j, text in others:
                a, b = (pick, text) if j % 2 else (text, pick)
                asks.append(fill(self.template, prompt=shown, response_a=a, response_b=b))
                where.append((k, j))
        out: list[list[float | None]] = [[] for _ in items]
        for (k, j), answer in zip(where, self._ask(asks), strict=True):
            w = parse_winner(answer)
            if w is None:
                self.unparsable += 1
                out[k].append(None)
                continue
            pick_is_a = bool(j % 2)
            out[k].append(0.5 if w == "tie" else 1.0 if (w == "a") == pick_is_a else 0.0)
        return out

    def describe(self) -> list[dict]:
        d = self.backend.describe()
        return [{"name": self.name, "mode": self.mode, "template": self.template_path or f"(default {self.mode})",
                 "base_url": d["base_url"], "concurrency": d["concurrency"], "api_key_env": d["api_key_env"],
                 "temperature": 0.0, "max_tokens": self.sampling.max_new_tokens}]

    def close(self) -> None:
        self.backend.close()
