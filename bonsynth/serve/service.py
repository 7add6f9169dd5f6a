"""Best-of-N per request, batched across requests: the server's engine room (no HTTP here).

A request becomes a `Job` (one prompt record, its sampling settings, how many answers to return). Jobs go
through two micro-batchers (`batcher.py`):

1. generation: jobs with the same sampling settings that arrive together are generated in one
   `backend.generate` call (hf: one padded `generate` per token budget; vllm: one engine call, so they share
   its continuous batching). The openai backend sends each job as its own upstream request, several in
   flight, so one failing upstream call fails only its own request.
2. scoring: the candidates of every job that finished generating together go to the RM(s) in one
   `score_results` call, whatever their sampling settings, then `build_rows` ranks each job's candidates.

Both halves are the ones of `bonsynth.generate.step` (the one best-of-N step), split so that scoring batches
can span requests with different sampling settings. Each job's samples are seeded from its prompt id, which
is derived from the request's content and `seed` (`job_for`), so the same request with the same seed gets
the same answer whatever else is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bonsynth.data.records import PromptRecord, content_id
from bonsynth.errors import BonsynthError, ConfigError
from bonsynth.generate import outputs
from bonsynth.generate.backends.base import GenerationBackend, GenerationResult, SamplingConfig
from bonsynth.generate.prune import PruneConfig
from bonsynth.generate.step import Scorer, build_rows, generate_candidates, score_results
from bonsynth.select.selection import SelectionConfig
from bonsynth.serve.batcher import MicroBatcher
from bonsynth.serve.config import ServeConfig
from bonsynth.serve.errors import ApiError, bad_request
from bonsynth.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    record: PromptRecord
    sampling: SamplingConfig
    n: int  # answers to return (the best n of sampling.n candidates)
    prune: PruneConfig | None = None  # the server's prune schedule at this request's reply budget


class SerialScorer:
    """The scorer behind a lock. With pruning, partial replies are scored in the generation thread while the
    scoring thread scores finished ones; an RM engine (a tokenizer, a vLLM engine) is not safe to call from two
    threads at once, so calls take turns. Without pruning only the scoring thread calls it: the lock is free."""

    def __init__(self, scorer: Scorer) -> None:
        self.inner = scorer
        self._lock = threading.Lock()

    def score(self, prompts, responses):
        with self._lock:
            return self.inner.score(prompts, responses)

    def describe(self) -> list[dict]:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()


@dataclass(frozen=True)
class Outcome:
    result: GenerationResult
    row: dict  # the job's candidates.jsonl row: candidates with rewards, `selected` ranked best first
    generate_s: float  # wall time of the generate call that made the candidates
    score_s: float  # wall time of the RM call that scored them
    total_s: float  # queueing + generation + scoring, as the service saw it
    generate_batch: int  # requests in that generate call
    rm_batch: int  # candidates in that RM call

    def chosen(self) -> list[dict]:
        """The returned candidates, best first: the first `n` of the ranking."""
        return [self.row["candidates"][i] for i in self.row["selected"]]


def context_limit(backend: GenerationBackend) -> int | None:
    """The policy's context length (prompt + new tokens), where the backend knows it: hf reads the model
    config, vllm its engine's `max_model_len`; an upstream server checks for itself."""
    cfg = getattr(getattr(backend, "model", None), "config", None)
    if cfg is not None:
        return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    if backend.name == "vllm":
        engine = getattr(backend.llm, "llm_engine", None)  # starts the engine: at startup, not on a request
        limit = getattr(getattr(engine, "model_config", None), "max_model_len", None)
        return int(limit) if limit else None
    return None


class BestOfNService:
    """Runs jobs through the two batchers; admission control keeps the queue bounded."""

    def __init__(self, config: ServeConfig, backend: GenerationBackend, scorer: Scorer, metrics: ServeMetrics,
                 *, owns_engines: bool = False) -> None:
        self.config = config
        self.backend = backend
        self.scorer = scorer
        self._rm = SerialScorer(scorer)
        self.metrics = metrics
        self.owns_engines = owns_engines
        self.upstream = backend.name == "openai"
        self.limit = context_limit(backend)
        gen_workers = config.upstream_concurrency if self.upstream else 1
        self._gen_pool = ThreadPoolExecutor(gen_workers, thread_name_prefix="bonsynth-generate")
        self._rm_pool = ThreadPoolExecutor(1, thread_name_prefix="bonsynth-score")
        self.generation = MicroBatcher(self._generate, self._gen_pool, max_wait_s=config.batch_wait_s,
                                       max_items=1 if self.upstream else config.max_batch_requests,
                                       workers=gen_workers, name="generate",
                                       others=lambda: self.pending - self.generation.queued())
        self.scoring = MicroBatcher(self._score, self._rm_pool, max_wait_s=config.batch_wait_s,
                                    max_items=config.max_batch_requests, name="score",
                                    others=lambda: self.pending - self.scoring.queued())
        self.pending = 0
        self.closed = False

    # ------------------------------------------------------------------ requests -> jobs

    def job_for(self, prompt: str | list[dict], *, n: int, best_of: int | None, temperature: float | None,
                top_p: float | None, max_tokens: int | None, stop: tuple[str, ...], seed: int | None) -> Job:
        """Check a request's settings against the server's limits (400s naming the field) and build its job."""
        cfg = self.config
        k = cfg.n if best_of is None else best_of
        if k > cfg.max_n:
            raise bad_request(f"field 'best_of': {k} is above this server's limit of {cfg.max_n} (--max-n)",
                              param="best_of")
        if n > k:
            raise bad_request(f"field 'n': n ({n}) must not exceed best_of ({k}): the answers are the best n "
                              "of best_of candidates", param="n")
        new_tokens = cfg.max_tokens if max_tokens is None else max_tokens
        if self.limit is not None and new_tokens >= self.limit:
            raise bad_request(f"field 'max_tokens': {new_tokens} leaves no room for the prompt in the model's "
                              f"context of {self.limit} tokens", code="context_length_exceeded", param="max_tokens")
        # The prompt id seeds every sample: from the content and seed when a seed is given (reproducible),
        # else fresh per request (as OpenAI samples without one).
        pid = content_id({"prompt": prompt, "seed": seed}) if seed is not None else f"r-{uuid.uuid4().hex}"
        sampling = SamplingConfig(n=k, temperature=cfg.temperature if temperature is None else float(temperature),
                                  top_p=cfg.top_p if top_p is None else float(top_p), max_new_tokens=new_tokens,
                                  seed=cfg.seed, stop=tuple(stop), long_prompt="skip")
        prune = cfg.prune(new_tokens)
        if prune is not None and n > prune.survivors(k):
            raise bad_request(f"field 'n': with pruning (keep {prune.keep:g} at tokens "
                              f"{','.join(map(str, prune.points))}) as few as {prune.survivors(k)} of best_of {k} "
                              f"candidates finish, so n ({n}) must be at most that", param="n")
        return Job(record=PromptRecord(id=pid, prompt=prompt), sampling=sampling, n=n, prune=prune)

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """At most `max_pending` requests queued or running; the next one gets a 503 at once."""
        if self.closed:
            raise ApiError(503, "the server is shutting down", type="overloaded_error", code="shutting_down")
        if self.pending >= self.config.max_pending:
            raise ApiError(503, f"overloaded: {self.pending} requests are queued or running (--max-pending "
                           f"{self.config.max_pending}); retry shortly", type="overloaded_error", code="overloaded",
                           headers={"Retry-After": "1"})
        self.pending += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.pending -= 1
            self.metrics.in_flight.dec()

    # ------------------------------------------------------------------ running

    async def run(self, job: Job) -> Outcome:
        start = time.perf_counter()
        try:
            result, gen_s, gen_batch = await self.generation.submit(job, key=(job.sampling, job.prune))
            if result.skipped:
                raise self._too_long(job, result)
            row, rm_s, rm_batch = await self.scoring.submit((job, result))
        except ApiError:
            raise
        except Exception as e:
            raise self._api_error(e) from e
        # the k best, finite rewards only (a NaN-scored candidate is never returned)
        row = dict(row, selected=row["selected"][: job.n])
        if not row["selected"]:
            raise ApiError(500, "the reward model gave no finite reward to any candidate", type="server_error",
                           code="nonfinite_rewards")
        return Outcome(result, row, gen_s, rm_s, time.perf_counter() - start, gen_batch, rm_batch)

    def _too_long(self, job: Job, result: GenerationResult) -> ApiError:
        room = f"at most {self.limit - job.sampling.max_new_tokens} prompt tokens" if self.limit else "less"
        where = f"the model's context of {self.limit} tokens" if self.limit else "the model's context"
        return bad_request(f"the prompt is {result.prompt_tokens} tokens, too long for {where} with max_tokens "
                           f"{job.sampling.max_new_tokens} ({room}); shorten it or lower max_tokens",
                           code="context_length_exceeded", param="messages" if job.record.is_chat else "prompt")

    def _api_error(self, e: Exception) -> ApiError:
        from bonsynth.generate.backends.openai_backend import UpstreamRejected

        if isinstance(e, UpstreamRejected) and e.status in (400, 404, 413, 422):
            return bad_request(str(e), code="upstream_rejected")
        if self.upstream and isinstance(e, BonsynthError):
            return ApiError(502, f"upstream failed: {e}", type="upstream_error", code="upstream_failed")
        if isinstance(e, ConfigError):
            return bad_request(str(e))
        log.error("request failed: %s: %s", type(e).__name__, e, exc_info=not isinstance(e, BonsynthError))
        return ApiError(500, f"internal error: {type(e).__name__}: {e}", type="server_error", code="internal_error")

    # worker-thread halves of the best-of-N step

    def _generate(self, jobs: list[Job]) -> list[tuple[GenerationResult, float, int]]:
        start = time.perf_counter()
        # one sampling setting and so one prune schedule per call (the batcher groups by both)
        results = generate_candidates([j.record for j in jobs], self.backend, jobs[0].sampling, jobs[0].prune,
                                      self._rm)
        took = time.perf_counter() - start
        pruned = sum(c.pruned_at is not None for r in results for c in r.completions)
        if pruned:
            self.metrics.pruned.inc(pruned)
        self.metrics.gen_seconds.observe(took)
        self.metrics.gen_batch_requests.observe(len(jobs))
        return [(r, took, len(jobs)) for r in results]

    def _score(self, items: list[tuple[Job, GenerationResult]]) -> list[tuple[dict, float, int]]:
        start = time.perf_counter()
        records = [job.record for job, _ in items]
        results = [res for _, res in items]
        scores = score_results(self._rm, records, results)
        ranking = SelectionConfig(mode="top-k", k=max(len(r.completions) for r in results))
        # a pruning server's rows say where each candidate stopped (pruned_at null: finished), a short request too
        pruning = self.config.prune_keep is not None
        rows = build_rows(records, results, scores.combined, scores.per_model, ranking,
                          pruning=pruning)[outputs.CANDIDATES]
        took = time.perf_counter() - start
        count = sum(len(r.completions) for r in results)
        self.metrics.candidates.inc(count)
        self.metrics.rm_batch.observe(count)
        self.metrics.rm_batch_requests.observe(len(items))
        self.metrics.rm_seconds.observe(took)
        return [(row, took, count) for row in rows]

    # ------------------------------------------------------------------ shutdown

    async def aclose(self) -> None:
        """Finish running batches, then free the engines (when this service loaded them)."""
        if self.closed:
            return
        self.closed = True
        await self.generation.aclose()
        await self.scoring.aclose()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._shutdown_pools)
        if self.owns_engines:
            self.close_engines()

    def _shutdown_pools(self) -> None:
        self._gen_pool.shutdown(wait=True)
        self._rm_pool.shutdown(wait=True)

    def close_engines(self) -> None:
        for engine in (self.backend, self.scorer):
            try:
                engine.close()
            except Exception as e:  # noqa: BLE001 (shutdown goes on)
                log.warning("closing %s failed: %s", type(engine).__name__, e)

    def describe(self) -> dict[str, Any]:
        prune = self.config.prune()
        return {"backend": self.backend.describe(), "reward_models": self.scorer.describe(),
                "context_length": self.limit,
                "prune": None if prune is None else {"at": list(prune.points) if self.config.prune_at else "auto",
                                                     "keep": prune.keep}}
