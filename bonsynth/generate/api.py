"""`bonsynth.BestOfN`: best-of-N from Python, for batch jobs.

    bon = BestOfN(policy="Qwen/Qwen2.5-0.5B-Instruct", reward="rm/", n=8)
    for rec in bon.run(["Tell me a joke.", [{"role": "user", "content": "Hi!"}]]):
        print(rec["id"], rec["candidates"][rec["selected"][0]]["text"])
    bon.write("out/")   # candidates/sft/dpo.jsonl + manifest.json, exactly as `bonsynth generate` writes them

Engines are loaded once, on first use, and reused across `run` calls. Same code as the CLI underneath.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from bonsynth.data.records import Location, PromptRecord
from bonsynth.generate import outputs
from bonsynth.generate.pipeline import GenerateConfig, NonFiniteGuard, backend_for, build_manifest
from bonsynth.generate.rundir import RunDir
from bonsynth.generate.step import best_of_n_step


def to_prompt_records(prompts: Iterable) -> list[PromptRecord]:
    """Accept strings, chat message lists, prompt dicts (`prompt`/`messages` [+ `id`]) or PromptRecords."""
    from bonsynth.data.normalize import normalize_rows

    rows: list[tuple[Location, dict]] = []
    ready: dict[int, PromptRecord] = {}
    for i, p in enumerate(prompts):
        if isinstance(p, PromptRecord):
            ready[i] = p
            rows.append((Location("<prompts>", i + 1), {"id": p.id, "prompt": p.prompt} if isinstance(p.prompt, str)
                         else {"id": p.id, "messages": p.prompt}))
        elif isinstance(p, str):
            rows.append((Location("<prompts>", i + 1), {"prompt": p}))
        elif isinstance(p, list):
            rows.append((Location("<prompts>", i + 1), {"messages": p}))
        else:
            rows.append((Location("<prompts>", i + 1), dict(p)))
    loaded = normalize_rows(rows, "prompts", "<prompts>")  # validates and checks ids are unique
    return [ready.get(i, rec) for i, rec in enumerate(loaded.records)]


class BestOfN:
    """Generate N candidates per prompt, score with the RM(s), select; as an iterator of records."""

    def __init__(
        self,
        policy: str,
        reward: str | Sequence[str],
        n: int = 4,
        backend: str = "auto",
        **options,
    ) -> None:
        rewards = [reward] if isinstance(reward, (str, Path)) else [str(r) for r in reward]
        known = {f.name for f in dataclasses.fields(GenerateConfig)} - {"policy", "rewards", "n", "backend", "prompts", "out"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown BestOfN option(s): {', '.join(unknown)}")
        options.setdefault("show_progress", False)
        self.config = GenerateConfig(policy=str(policy), rewards=[str(r) for r in rewards], prompts="<in-memory>",
                                     out="", n=n, backend=backend, **options)
        self.config.validate()
        self._backend = None
        self._scorer = None
        self._rows: dict[str, list[dict]] = {name: [] for name in outputs.DATA_FILES}

    @property
    def backend(self):
        if self._backend is None:
            self._backend = backend_for(self.config)
        return self._backend

    @property
    def scorer(self):
        if self._scorer is None:
            from bonsynth.rm.ensemble import RewardEnsemble

            self._scorer = RewardEnsemble.load(self.config.rewards, self.config.reward_weights,
                                               **self.config.reward_load_kwargs())
        return self._scorer

    def run(self, prompts: Iterable) -> Iterator[dict]:
        """Yield one record per prompt (the rows of candidates.jsonl), batch by batch."""
        records = to_prompt_records(prompts)
        self._rows = {name: [] for name in outputs.DATA_FILES}
        sampling, selection, prune = self.config.sampling(), self.config.selection(), self.config.prune()
        for lo in range(0, len(records), self.config.batch_size):
            batch = records[lo : lo + self.config.batch_size]
            rows = best_of_n_step(batch, self.backend, self.scorer, sampling, selection, prune)
            for name in outputs.DATA_FILES:
                self._rows[name].extend(rows[name])
            yield from rows[outputs.CANDIDATES]

    def write(self, out_dir: str | Path, prompts: Iterable | None = None) -> dict:
        """Write the last `run` (or run `prompts` first) to `out_dir`; returns the manifest.

        The directory appears complete or not at all: a write that fails (a NaN reward over the budget, a full
        disk, an engine that cannot describe itself) removes what it wrote, since in-memory prompts cannot be
        resumed.
        """
        if prompts is not None:
            for _ in self.run(prompts):
                pass
        cfg = dataclasses.replace(self.config, out=str(out_dir), resume=False)
        with RunDir.open(cfg, resumable=False) as run:
            NonFiniteGuard(cfg, run.state, len(self._rows[outputs.CANDIDATES])).check(self._rows)
            run.writer().append_batch(self._rows, len(self._rows[outputs.CANDIDATES]))
            manifest = build_manifest(cfg, run.out, self.backend, self.scorer)
            run.finish(manifest)
        return manifest

    def close(self) -> None:
        """Release both engines (GPU memory, vLLM worker processes); a later `run` loads them again."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    def __enter__(self) -> BestOfN:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
