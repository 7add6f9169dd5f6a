"""`bonsynth generate --engine ray`: the same best-of-N pipeline, run on Ray Data.

    prompts --from_items--> [GenerateActor x W] --map--> [ScoreActor x R] --map--> select --> driver writes

Why it is shaped like this:

- One dataset row is one *block*: `--batch-size` consecutive prompts, cut exactly where the local run cuts
  its batches. The RM therefore scores exactly the batches the local run scores and the driver appends
  exactly the batches the local run appends, so the files are byte for byte the local run's, whatever Ray
  does with bundling, retries or scheduling. (Rows of single prompts would leave the RM batch to Ray's
  bundler, and the floats could then differ.)
- Generation runs in an actor pool of our own backends (hf, vllm, openai), each replica loaded once.
  Every prompt is seeded from `prompt_seed(run_seed, id)`, so which replica gets which block does not
  change a single token.
- Scoring runs in a second actor pool of `RewardEnsemble` replicas; selection (`build_rows`) is a plain
  task. The stages stream: replicas generate block k+1 while block k is scored and written.
- Writing stays on the driver, with the local path's `DurableWriter`, in prompt order (the dataset
  preserves order, and a small reorder buffer makes that independent of Ray). So candidates/sft/dpo.jsonl,
  state.json and manifest.json are the local formats, and `--resume` works the same, across engines too.
- Not `ray.data.llm`: its processors are vLLM (or HTTP) only and GPU-oriented, and build their own sampling
  params and chat-template stages. They would not run the hf backend, our chat rendering and long-prompt
  handling, or our per-prompt seeding, so a Ray run would no longer equal a local run.

Resume granularity is the block: state.json records `prompts_done` after each appended block; `--resume`
skips those prompts before the dataset is built, and blocks that were in flight are generated again (with
the same seeds, so with the same result). With `--shard I/K`, each shard is its own resumable run.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bonsynth.data.records import PromptRecord
from bonsynth.errors import BonsynthError, ConfigError
from bonsynth.generate import outputs
from bonsynth.generate.backends.base import Completion, GenerationBackend, GenerationResult
from bonsynth.generate.fingerprint import model_fingerprint, package_versions
from bonsynth.generate.pipeline import (
    GenerateConfig,
    NonFiniteGuard,
    apply_shard,
    backend_kwargs,
    check_model_sources,
    compose_manifest,
    load_generation_prompts,
    run_extras,
)
from bonsynth.generate.prompts import PromptSource, as_prompt_source
from bonsynth.generate.rundir import RunDir
from bonsynth.generate.step import build_rows, generate_candidates, score_results
from bonsynth.select.selection import SelectionConfig

INSTALL_HINT = 'the ray engine needs Ray Data: pip install "bonsynth[ray]"'
SELECT_CPUS = 0.25  # the selection tasks are light; leave them room next to the actor pools
_STATE_KEY = "ray_describe"  # backend/RM descriptions kept in state.json, for a resume with nothing left to do


def import_ray():
    """Ray, imported lazily so that bonsynth runs without it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise BonsynthError(f"{INSTALL_HINT} ({e})") from None
    return ray


@dataclass(frozen=True)
class RayPlan:
    """How many replicas of each kind, and what each one asks Ray for."""

    workers: int
    gpus_per_worker: float
    rm_workers: int
    rm_gpus: float
    cpus_per_actor: float

    def describe(self) -> dict:
        return asdict(self)


def plan_resources(
    cluster: dict[str, float],
    workers: int,
    gpus_per_worker: float,
    rm_workers: int = 1,
    rm_gpus: float | None = None,
) -> RayPlan:
    """Check the request against the cluster up front: an actor that cannot be placed would hang the run."""
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1 (got {workers})")
    if rm_workers < 1:
        raise ConfigError(f"rm_workers must be >= 1 (got {rm_workers})")
    if gpus_per_worker < 0:
        raise ConfigError(f"--gpus-per-worker must be >= 0 (got {gpus_per_worker})")
    if rm_gpus is None:
        rm_gpus = min(1.0, gpus_per_worker)  # with GPUs, each RM replica gets (up to) one of its own
    if rm_gpus < 0:
        raise ConfigError(f"rm_gpus must be >= 0 (got {rm_gpus})")
    have_gpus = float(cluster.get("GPU", 0.0))
    need_gpus = workers * gpus_per_worker + rm_workers * rm_gpus
    if need_gpus > have_gpus + 1e-9:
        raise ConfigError(
            f"--workers {workers} x --gpus-per-worker {gpus_per_worker:g} plus {rm_workers} reward-model "
            f"replica(s) x {rm_gpus:g} GPU need {need_gpus:g} GPUs; the Ray cluster has {have_gpus:g}. "
            "Lower --workers (on one node, leave a GPU for the RM: --workers $((GPUS-1)))."
        )
    have_cpus = float(cluster.get("CPU", 0.0))
    actors = workers + rm_workers
    # One CPU per replica; on a small cluster, shares of one, so that every replica and the selection
    # tasks fit at once.
    cpus = min(1.0, (have_cpus - SELECT_CPUS) / actors)
    if cpus < 0.05:
        raise ConfigError(f"the Ray cluster has {have_cpus:g} CPUs, too few for {actors} replicas; lower --workers")
    return RayPlan(workers=workers, gpus_per_worker=float(gpus_per_worker), rm_workers=rm_workers,
                   rm_gpus=float(rm_gpus), cpus_per_actor=round(cpus, 4))


# --------------------------------------------------------------------- rows <-> bonsynth objects


def make_blocks(prompts: PromptSource | Sequence[PromptRecord], start: int, batch_size: int) -> list[dict]:
    """Dataset rows: one per batch of prompts, cut at the local run's batch boundaries from `start`.

    A list, unlike the local run's batch-by-batch read: `ray.data.from_items` wants its rows up front (they go
    to the object store anyway). They hold each block's ids and prompts as JSON, not PromptRecords.
    """
    rows = []
    for lo, batch in as_prompt_source(prompts).batches(batch_size, start):
        rows.append({"lo": lo, "hi": lo + len(batch),
                     "records": json.dumps([{"id": r.id, "prompt": r.prompt} for r in batch], ensure_ascii=False)})
    return rows


def _records(row: dict) -> list[PromptRecord]:
    return [PromptRecord(id=d["id"], prompt=d["prompt"]) for d in json.loads(row["records"])]


def _results_to_json(results: list[GenerationResult]) -> str:
    return json.dumps([asdict(r) for r in results], ensure_ascii=False)


def _results_from_json(text: str) -> list[GenerationResult]:
    out = []
    for d in json.loads(text):
        comps = tuple(Completion(**c) for c in d.pop("completions"))
        out.append(GenerationResult(completions=comps, **d))
    return out


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def _worker_device(device: str, gpus: float) -> str:
    """`auto` must not pick a GPU that Ray did not give this replica."""
    return "cpu" if device == "auto" and gpus <= 0 else device


def make_backend_for(cfg: GenerateConfig, gpus: float) -> GenerationBackend:
    """The local run's backend, built on a worker (auto picks vllm only when the replica holds a GPU)."""
    from bonsynth.generate.backends import make_backend, resolve_backend_name

    name = "hf" if cfg.backend == "auto" and gpus <= 0 else resolve_backend_name(cfg.backend)
    kw = backend_kwargs(cfg, name, device=_worker_device(cfg.device, gpus))
    if name == "vllm" and gpus >= 2:
        # A replica holding G GPUs shards the model over them (tensor parallel). vLLM's own Ray executor
        # would ask Ray for G more GPUs from inside this actor; its multiprocessing one uses the ones we hold.
        kw.setdefault("tensor_parallel_size", int(gpus))
        kw.setdefault("distributed_executor_backend", "mp")
    return make_backend(name, cfg.policy, **kw)


class GenerateActor:
    """One policy replica: loads the backend once, then generates N candidates for block after block.

    With pruning (--prune-at/--prune-keep) the replica also loads the RMs, on its own device, to score the
    partial replies between segments; the score pool then scores only the finished candidates.
    """

    def __init__(self, cfg: GenerateConfig, gpus: float, threads: int = 1) -> None:
        _set_threads(threads)
        self.backend = make_backend_for(cfg, gpus)
        self.sampling = cfg.sampling()
        self.prune = cfg.prune()
        self.scorer = None
        if self.prune is not None:
            from bonsynth.rm.ensemble import RewardEnsemble

            load_kw = dict(cfg.reward_load_kwargs(), device=_worker_device(cfg.device, gpus))
            self.scorer = RewardEnsemble.load(cfg.rewards, cfg.reward_weights, **load_kw)
        self.description = json.dumps(self.backend.describe(), sort_keys=True, default=str)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        results = generate_candidates(_records(row), self.backend, self.sampling, self.prune, self.scorer)
        return dict(row, results=_results_to_json(results), backend=self.description)


class ScoreActor:
    """One reward-model replica (all RMs of the ensemble): scores a block's candidates in one call."""

    def __init__(self, cfg: GenerateConfig, gpus: float, threads: int = 1) -> None:
        from bonsynth.rm.ensemble import RewardEnsemble

        _set_threads(threads)
        load_kw = dict(cfg.reward_load_kwargs(), device=_worker_device(cfg.device, gpus))
        self.scorer = RewardEnsemble.load(cfg.rewards, cfg.reward_weights, **load_kw)
        self.description = json.dumps(self.scorer.describe(), sort_keys=True, default=str)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        scores = score_results(self.scorer, _records(row), _results_from_json(row["results"]))
        return dict(row, scores=json.dumps({"combined": scores.combined, "per_model": scores.per_model}),
                    rewards=self.description)


def select_block(row: dict[str, Any], selection: SelectionConfig, pruning: bool = False) -> dict[str, Any]:
    """Selection is cheap and stateless: a plain task turns a scored block into the rows of the three files."""
    scores = json.loads(row["scores"])
    rows = build_rows(_records(row), _results_from_json(row["results"]), scores["combined"], scores["per_model"],
                      selection, pruning=pruning)
    return {"lo": row["lo"], "hi": row["hi"], "rows": json.dumps(rows, ensure_ascii=False),
            "backend": row["backend"], "rewards": row["rewards"]}


# --------------------------------------------------------------------- driver


def _check_models(cfg: GenerateConfig) -> None:
    """Catch a mistyped model path or pickle-only weights on the driver, before replicas start (and fail far away)."""
    check_model_sources(cfg)


_REMOTE_ERROR = re.compile(r"bonsynth\.errors\.(?:\w*Error): (.+)")


def _user_error(exc: BaseException) -> BonsynthError | None:
    """The BonsynthError a replica raised, if that is what Ray is reporting (so the CLI exits 2, no traceback)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, BonsynthError):
            return e
        todo.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
    # A replica that failed in its constructor reaches us as ActorDiedError, with only the remote traceback text.
    found = _REMOTE_ERROR.findall(str(exc))
    return BonsynthError(f"{found[-1].strip()} (in a Ray replica)") if found else None


def connect(ray, address: str | None) -> bool:
    """Join the cluster at `address` (or the running one); else start a local one. True if we started it."""
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, logging_level="WARNING")
        else:  # $RAY_ADDRESS if set, else a new local cluster (no dashboard: a batch job does not need one)
            ray.init(include_dashboard=False, logging_level="WARNING")
    except ConnectionError as e:
        raise BonsynthError(f"cannot connect to the Ray cluster at {address}: {e}") from None
    return True


def run_generate_ray(
    cfg: GenerateConfig,
    *,
    workers: int = 2,
    gpus_per_worker: float = 0,
    address: str | None = None,
    rm_workers: int = 1,
    rm_gpus: float | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict:
    """Run best-of-N on Ray Data (W policy replicas, `rm_workers` RM replicas); returns the manifest.

    Writes what `run_generate` writes, byte for byte, and resumes the same way (`cfg.resume`).
    """
    from tqdm.auto import tqdm

    ray = import_ray()
    cfg.validate()
    selection = cfg.selection()
    prompts = load_generation_prompts(cfg)  # bad input fails here, before anything is written
    probe = prompts  # the whole file's first prompt, for a shard with nothing to do
    skipped = getattr(prompts, "skipped", None)
    prompts, shard_info = apply_shard(cfg, prompts)
    if not (address or os.environ.get("RAY_ADDRESS")):
        _check_models(cfg)  # on a remote cluster the paths need only exist on the workers
    started = connect(ray, address)
    try:
        plan = plan_resources(ray.cluster_resources(), workers, gpus_per_worker, rm_workers, rm_gpus)
        with RunDir.open(cfg, prompts.digest()) as run:
            try:
                if run.complete and (run.out / outputs.MANIFEST).exists():
                    return json.loads((run.out / outputs.MANIFEST).read_text(encoding="utf-8"))
                describe = _run_blocks(ray, cfg, plan, selection, prompts, probe, run, tqdm, on_batch)
                manifest = _manifest(cfg, run.out, describe, plan, ray.__version__)
                manifest.update(run_extras(cfg, shard_info, skipped))
                run.finish(manifest)
                return manifest
            except BaseException as e:
                err = _user_error(e)
                if err is not None and err is not e:
                    raise err from None
                raise
    finally:
        if started:
            ray.shutdown()


def _run_blocks(ray, cfg: GenerateConfig, plan: RayPlan, selection: SelectionConfig, prompts: PromptSource,
                probe: PromptSource, run: RunDir, tqdm, on_batch) -> dict:
    """Stream the remaining blocks through the actor pools and append them in order; returns the describes."""
    blocks = make_blocks(prompts, run.prompts_done, cfg.batch_size)
    describe_only = False
    if not blocks:
        if _STATE_KEY in run.state:
            return run.state[_STATE_KEY]
        # Nothing left to generate (an empty shard, or a crash right before the manifest in a run that kept
        # no descriptions): put one prompt through the replicas only to learn what they describe.
        blocks = make_blocks(probe.head(1), 0, 1)
        describe_only = True
        if not blocks:
            raise ConfigError(f"no prompts to generate for in {cfg.prompts}")

    with _data_options(ray):
        return _stream(ray, cfg, plan, selection, prompts, blocks, describe_only, run, tqdm, on_batch)


@contextmanager
def _data_options(ray):
    """Ordered output and no Ray progress bars for this run only (the driver's DataContext is restored)."""
    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.execution_options.preserve_order = True  # blocks come back in prompt order: bounded reorder buffer
    ctx.enable_progress_bars = False  # our own bar counts prompts, as in the local run
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


def _stream(ray, cfg: GenerateConfig, plan: RayPlan, selection: SelectionConfig, prompts: PromptSource,
            blocks: list[dict], describe_only: bool, run: RunDir, tqdm, on_batch) -> dict:
    """The Ray Data pipeline itself, and the driver loop that writes its blocks in prompt order."""
    start, state = run.prompts_done, run.state
    ds = ray.data.from_items(blocks, override_num_blocks=len(blocks))
    threads = max(1, math.floor(plan.cpus_per_actor))
    ds = ds.map(GenerateActor, fn_constructor_kwargs={"cfg": cfg, "gpus": plan.gpus_per_worker, "threads": threads},
                compute=ray.data.ActorPoolStrategy(size=plan.workers), num_cpus=plan.cpus_per_actor,
                num_gpus=plan.gpus_per_worker or None)
    ds = ds.map(ScoreActor, fn_constructor_kwargs={"cfg": cfg, "gpus": plan.rm_gpus, "threads": threads},
                compute=ray.data.ActorPoolStrategy(size=plan.rm_workers), num_cpus=plan.cpus_per_actor,
                num_gpus=plan.rm_gpus or None)
    ds = ds.map(select_block, fn_kwargs={"selection": selection, "pruning": cfg.prune() is not None}, num_cpus=SELECT_CPUS)

    describe: dict | None = None  # from this run's replicas, as the local run describes its own backend
    writer = run.writer()  # also cuts the files back to state.json, as the local run does
    guard = NonFiniteGuard(cfg, state, len(prompts))
    pending: dict[int, dict] = {}
    next_lo = blocks[0]["lo"]
    n_cands, t_start = 0, time.perf_counter()
    bar = tqdm(total=len(prompts), initial=start, desc="best-of-N (ray)", unit="prompt",
               disable=not cfg.show_progress or describe_only, dynamic_ncols=True)
    try:
        for row in ds.iter_rows():
            if describe is None:
                describe = {"backend": json.loads(row["backend"]), "rewards": json.loads(row["rewards"])}
                state[_STATE_KEY] = describe  # persisted with the first appended block
            if describe_only:
                continue
            pending[int(row["lo"])] = row
            while next_lo in pending:
                done = pending.pop(next_lo)
                rows = json.loads(done["rows"])
                hi = int(done["hi"])
                guard.check(rows)
                writer.append_batch(rows, hi)
                n_cands += sum(len(r["candidates"]) for r in rows[outputs.CANDIDATES])
                bar.update(hi - next_lo)
                bar.set_postfix(cand_per_s=f"{n_cands / max(1e-9, time.perf_counter() - t_start):.1f}")
                next_lo = hi
                if on_batch is not None:
                    on_batch(hi, len(prompts))
    finally:
        bar.close()
        writer.close()
    if describe is None or (not describe_only and (pending or next_lo != len(prompts))):
        raise RuntimeError(f"ray engine: blocks went missing (wrote up to prompt {next_lo} of {len(prompts)})")
    return describe


def _manifest(cfg: GenerateConfig, out: Path, describe: dict, plan: RayPlan, ray_version: str) -> dict:
    """The local run's manifest (same `compose_manifest`), plus how the Ray run was laid out."""
    models = {
        "policy": model_fingerprint(cfg.policy),
        "rewards": [dict(model_fingerprint(p), **d) for p, d in zip(cfg.rewards, describe["rewards"], strict=True)],
    }
    manifest = compose_manifest(asdict(cfg), out, describe["backend"], models, package_versions())
    manifest["engine"] = dict(plan.describe(), name="ray", ray=ray_version)
    return manifest
