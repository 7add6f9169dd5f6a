"""`bonsynth generate`: best-of-N end to end.

prompts -> backend (N candidates each) -> reward model(s) -> selection -> candidates/sft/dpo files -> manifest.
Work goes in batches of prompts; each finished batch is durable, so `--resume` after a crash continues
where the last batch ended and produces the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bonsynth.data.records import PromptRecord
from bonsynth.errors import ConfigError
from bonsynth.generate import outputs
from bonsynth.generate.backends.base import GenerationBackend, SamplingConfig
from bonsynth.generate.fingerprint import model_fingerprint, package_versions
from bonsynth.generate.prompts import FilePrompts, PromptSource, as_prompt_source
from bonsynth.generate.prune import PruneConfig
from bonsynth.generate.rundir import RunDir
from bonsynth.generate.step import Scorer, best_of_n_step
from bonsynth.generate.summary import summarize
from bonsynth.redact import redact
from bonsynth.select.selection import SelectionConfig, parse_select
from bonsynth.settings import (
    PREFIX_SHARING_HELP,
    PREFIX_SHARING_MODES,
    UNSAFE_WEIGHTS_HELP,
    FieldError,
    check_declared,
    comma_list,
    described,
    fingerprint_view,
    in_group,
    is_required,
    names_where,
    not_fingerprinted,
    number,
)

_DTYPES = ("auto", "float32", "fp32", "float", "bfloat16", "bf16", "float16", "fp16", "half")  # as RewardModel reads them
_LOADING = "Applies to the policy and the RMs."
# the parts of a generate run; each field names its part, and `--help` lists the options part by part
_run, _sampling, _selection, _reward, _backend = (in_group(g) for g in ("run", "sampling", "selection", "reward",
                                                                          "backend"))
GROUPS = ("run", "sampling", "selection", "reward", "backend")


@dataclass
class GenerateConfig:
    """One `bonsynth generate` run. Each field says its flag, help and fingerprint role (`bonsynth.settings`):
    the CLI's options are generated from these fields, and `--resume` checks the fields that decide what the
    run writes. `fingerprint=False`: may change on resume (where it runs, how fast, whether it may stop or load);
    `"if_set"`: added after runs existed, so left out while unset and older runs still resume."""

    policy: str = _backend(help="Policy model: local path or hub id (or the served model name for openai).")
    rewards: list[str] = _reward(flag="--reward", multiple=True,
                                 help="Reward model directory; repeat for several.")
    prompts: str = _run(metavar="FILE", help="Prompts file (jsonl/json/parquet/save_to_disk folder).")
    out: str = _run(fingerprint=False, metavar="DIR", help="Output directory.")
    n: int = _sampling(4, ge=1, help="Candidates per prompt.")
    reward_weights: list[float] | None = _reward(
        None, parse=comma_list(float, "numbers", "0.7,0.3"), help="Comma-separated weights for several RMs, e.g. 0.7,0.3.")
    backend: str = _backend("auto", choices=("auto", "vllm", "hf", "openai"),
                           help="auto: vllm when installed with a GPU, else hf.")
    temperature: float = _sampling(1.0, ge=0)
    top_p: float = _sampling(1.0, gt=0, le=1)
    max_new_tokens: int = _sampling(128, ge=1)
    seed: int = _sampling(0)
    stop: list[str] = _sampling(default_factory=list, multiple=True, help="Stop string; repeatable.")
    long_prompts: str = _sampling("truncate", choices=("truncate", "skip"),
                                help="A prompt longer than the context: left-truncate it, or skip it (reported either way).")
    select: str = _selection("best", help="best: the best candidate of each prompt as an SFT row (sft.jsonl); top-k:K: the "
                                       "K best; pairs: only a best-vs-worst DPO pair per prompt (dpo.jsonl), no SFT rows.")
    write_pairs: bool = _selection(False, help="With best or top-k:K: also write each prompt's best-vs-worst DPO pair to "
                                            "dpo.jsonl.")
    min_reward: float | None = _selection(None, type=float, help="Never select a candidate below this reward.")
    min_margin: float | None = _selection(None, type=float, help="Skip a DPO pair whose reward margin is below this "
                                                              "(needs pairs: --select pairs or --write-pairs).")
    dedup: bool = _selection(False, help="Drop exact and near-duplicate candidates before selecting.")
    length_normalize: bool = _selection(False, help="Rank candidates by reward per token.")
    batch_size: int = _run(64, ge=1, fingerprint=False, help="Prompts per durable batch.")
    resume: bool = _run(False, fingerprint=False, help="Continue an interrupted run in OUT.")
    device: str = _backend("auto", fingerprint=False, help="Device for the hf backend and the RMs.")
    dtype: str = _backend("auto", help="auto = bf16 on a GPU, fp32 on the CPU.")
    prompt_format: str = _run("auto", flag="--format", choices=("auto", "prompts"))
    limit: int | None = _run(None, type=int, ge=1, help="Use only the first LIMIT prompts.")
    reward_engine: str = _reward("hf", choices=("hf", "vllm"),
                                 help="Score with bonsynth's engine (hf) or vLLM's pooling runner (vllm).")
    shard: str | None = _run(None, type=str, help="I/K: process only shard I (0-based) of K, for array jobs; merge "
                                                     "with `bonsynth gather`.")
    # backend-specific knobs (hf batch size, vLLM parallelism, openai base URL...): the CLI fills them from its
    # backend flags; a base URL may carry credentials, so the manifest and repr redact it
    backend_options: dict = _backend(default_factory=dict, fingerprint=False, cli=False)
    show_progress: bool = _run(True, fingerprint=False, flag="--quiet", invert=True, help="No progress bar.")
    reward_dtype: str | None = _reward(None, type=str, fingerprint="if_set",
                                       help="dtype of the reward models (default: --dtype), e.g. bfloat16 RMs beside a "
                                            "float32 policy.")
    # rewards change only by float rounding with prefix sharing, so a resume may switch it
    prefix_sharing: str | bool = _reward("auto", fingerprint=False, choices=PREFIX_SHARING_MODES, help=PREFIX_SHARING_HELP)
    trust_remote_code: bool = _backend(False, fingerprint=False, negatable=True,
                                      help="Run model code from the model directories (policy and RMs).")
    allow_unsafe_weights: bool = _backend(False, fingerprint=False, help=f"{UNSAFE_WEIGHTS_HELP} {_LOADING}")
    max_model_len: int | None = _backend(None, type=int, ge=1, fingerprint="if_set",
                                        help="vllm backend: context length, prompt plus new tokens (default: the "
                                             "model's).")
    enforce_eager: bool = _backend(False, fingerprint=False,
                                  help="vllm backend: no CUDA graphs (faster start, less GPU memory).")
    # only decides whether a run stops, so a resume may raise it
    max_nonfinite: float = _reward(0.0, fingerprint=False, ge=0, le=1,
                                   help="Share of the run's candidates that may get a NaN/inf reward (never selected, "
                                        "written as null) before the run stops with an error.")
    skip_invalid: bool = _run(False, fingerprint="if_set",
                                 help="Drop prompt rows that fail validation (each printed as file:line:field, listed "
                                      "in the manifest) instead of stopping at the first.")
    # Speculative rejection (bonsynth.generate.prune): token counts at which partial replies are scored, and the
    # share of the running candidates kept at each; `prune_keep` alone prunes once, at max_new_tokens // 8.
    prune_at: list[int] | None = _sampling(
        None, fingerprint="if_set", manifest_if_set=True, parse=comma_list(int, "token counts", "16,48"),
        help="Speculative rejection: comma-separated token counts (e.g. 16,48) at which the partial replies are scored "
             "and the weakest stopped; needs --prune-keep.")
    prune_keep: float | None = _sampling(
        None, fingerprint="if_set", manifest_if_set=True, parse=number,
        help="Share of the running candidates kept at each --prune-at point (ceil, at least 1), e.g. 0.25; alone it "
             "prunes once, at max-new-tokens // 8.")

    def __repr__(self) -> str:  # backend_options may hold a base URL with credentials
        fields = redact(asdict(self))
        return f"GenerateConfig({', '.join(f'{k}={v!r}' for k, v in fields.items())})"

    def part(self, name: str) -> dict:
        """One part of the config (`GROUPS`: run, sampling, selection, reward, backend) as field -> value."""
        if name not in GROUPS:
            raise ValueError(f"no part {name!r}; the parts are {', '.join(GROUPS)}")
        return {f.name: getattr(self, f.name) for f, spec in described(type(self)) if spec.group == name}

    def to_dict(self) -> dict:
        """Every field, JSON-ready: what the loop hands its generation worker (`generate/worker.py`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GenerateConfig:
        """The config `to_dict` wrote; an unknown or missing field is a one-line error naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"GenerateConfig has no field {', '.join(unknown)}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if is_required(f) and f.name not in data)
        if missing:
            raise ConfigError(f"GenerateConfig needs {', '.join(missing)}")
        return cls(**data)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Every field's value, checked when the config is built: a bad one is a `FieldError` naming the field
        (the CLI names its flag)."""
        check_declared(self)  # choices and bounds, as each field declares them
        mode, _ = parse_select(self.select)
        if (mode == "pairs" or self.write_pairs) and self.n < 2:
            raise FieldError(f"{'`select` pairs' if mode == 'pairs' else '`write_pairs`'} needs `n` >= 2")
        if mode == "pairs" and self.write_pairs:
            raise FieldError("`write_pairs` is for `select` best or top-k:K; `select` pairs always writes pairs")
        if self.min_margin is not None and not (mode == "pairs" or self.write_pairs):
            raise FieldError("`min_margin` filters DPO pairs, which this run does not write: use `select` pairs, "
                             "or add `write_pairs`")
        if self.shard is not None:
            parse_shard(self.shard)
        if self.reward_weights is not None and len(self.rewards) == 1:
            raise FieldError("`reward_weights` needs two or more `rewards` models (a single RM's reward is used as "
                             "it is); drop `reward_weights`")
        if self.reward_weights is not None and not all(math.isfinite(w) for w in self.reward_weights):
            raise FieldError(f"`reward_weights` must be finite numbers (got {self.reward_weights})")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise FieldError(f"`reward_weights` has {len(self.reward_weights)} values for {len(self.rewards)} "
                             "`rewards` models")
        if self.reward_dtype is not None and str(self.reward_dtype).lower().removeprefix("torch.") not in _DTYPES:
            raise FieldError(f"`reward_dtype` must be auto, float32, bfloat16 or float16 (got {self.reward_dtype!r})")
        if self.backend in ("hf", "openai"):
            check_vllm_only(self, self.backend)
        self.prune()

    def validate(self) -> None:
        """What a run needs beyond valid fields (checked by every engine before it starts): a reward model.
        (A config without one still builds: `prompts synth` uses the policy half alone.)"""
        self.check()
        if not self.rewards:
            raise FieldError("at least one `rewards` model is needed")

    def prune(self) -> PruneConfig | None:
        """The prune schedule (None: plain best-of-N); a bad value is a `FieldError` naming the fields."""
        return PruneConfig.resolve(self.prune_at, self.prune_keep, self.max_new_tokens)

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(n=self.n, temperature=self.temperature, top_p=self.top_p,
                              max_new_tokens=self.max_new_tokens, seed=self.seed, stop=tuple(self.stop),
                              long_prompt=self.long_prompts)

    def selection(self) -> SelectionConfig:
        mode, k = parse_select(self.select)
        return SelectionConfig(mode=mode, k=k, min_reward=self.min_reward, min_margin=self.min_margin,
                               dedup=self.dedup, length_normalize=self.length_normalize, write_pairs=self.write_pairs)

    @property
    def rm_dtype(self) -> str:
        """The dtype the RMs load in: `reward_dtype`, else the same as the policy's `dtype`."""
        return self.dtype if self.reward_dtype is None else self.reward_dtype

    def reward_load_kwargs(self) -> dict:
        """`RewardEnsemble.load` keywords, so the pipeline, `BestOfN` and the Ray workers load RMs alike."""
        return {"engine": self.reward_engine, "device": self.device, "dtype": self.rm_dtype,
                "prefix_sharing": self.prefix_sharing, "trust_remote_code": self.trust_remote_code,
                "allow_unsafe_weights": self.allow_unsafe_weights}

    def fingerprinted(self) -> dict:
        """The fields that decide what the run writes (a --resume must match them)."""
        d = fingerprint_view(self)
        if d.get("reward_dtype") == self.dtype:
            d.pop("reward_dtype")  # spelled out or defaulted, the RMs run in the same dtype
        d["long_prompt"] = d.pop("long_prompts")  # its name before it matched the flag: older runs still resume
        return d

    def fingerprint(self) -> str:
        d = self.fingerprinted()
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


NOT_IN_FINGERPRINT = not_fingerprinted(GenerateConfig)
MANIFEST_IF_SET = names_where(GenerateConfig, lambda s: s.manifest_if_set)


def check_vllm_only(cfg: GenerateConfig, backend: str) -> None:
    """--max-model-len and --enforce-eager are vLLM engine settings: an error, not a silent no-op, elsewhere."""
    given = [f"`{name}`" for name in ("max_model_len", "enforce_eager") if getattr(cfg, name)]
    if given and backend != "vllm":
        raise FieldError(f"{' and '.join(given)} only apply to the vllm backend (this run uses {backend})")


def parse_shard(spec: str) -> tuple[int, int]:
    """`I/K` with 0 <= I < K."""
    try:
        i, k = (int(x) for x in spec.split("/"))
    except ValueError:
        raise FieldError(f"`shard` must look like I/K (e.g. 0/4), got {spec!r}") from None
    if not (k >= 1 and 0 <= i < k):
        raise FieldError(f"`shard` {spec}: need 0 <= I < K")
    return i, k


def shard_range(num_prompts: int, batch_size: int, index: int, count: int) -> tuple[int, int]:
    """The prompts [lo, hi) of shard `index` of `count`.

    Shards are contiguous runs of whole batches, so every batch (and therefore every RM scoring batch)
    is the same as in a single run: shards gathered back together equal the single run byte for byte.
    """
    batches = -(-num_prompts // batch_size)
    lo_b, hi_b = batches * index // count, batches * (index + 1) // count
    return min(num_prompts, lo_b * batch_size), min(num_prompts, hi_b * batch_size)


def apply_shard(cfg: GenerateConfig, prompts: PromptSource | Sequence[PromptRecord]) -> tuple[PromptSource, dict | None]:
    """This job's slice of the prompts under `--shard I/K` (positions from 0), and the shard record for the manifest."""
    prompts = as_prompt_source(prompts)
    if cfg.shard is None:
        return prompts, None
    index, count = parse_shard(cfg.shard)
    lo, hi = shard_range(len(prompts), cfg.batch_size, index, count)
    info = {"index": index, "count": count, "range": [lo, hi], "total_prompts": len(prompts),
            "batch_size": cfg.batch_size}
    return prompts.slice(lo, hi), info


def backend_kwargs(cfg: GenerateConfig, name: str, *, device: str | None = None) -> dict:
    """Constructor keywords for backend `name`: backend_options plus what the config says about loading.

    `device` overrides `cfg.device` for the hf backend (a Ray replica without a GPU must not pick one).
    """
    check_vllm_only(cfg, name)
    kw = dict(cfg.backend_options)
    kw.setdefault("trust_remote_code", cfg.trust_remote_code)  # openai: for its optional local tokenizer
    if name in ("hf", "vllm"):
        kw.setdefault("allow_unsafe_weights", cfg.allow_unsafe_weights)
    if name == "hf":
        kw.setdefault("device", device or cfg.device)
        kw.setdefault("dtype", cfg.dtype)
    if name == "vllm":
        from bonsynth.models import dtype_name

        kw.setdefault("dtype", dtype_name(cfg.dtype))  # vLLM's own "auto" reads the checkpoint's dtype
        if cfg.max_model_len is not None:
            kw.setdefault("max_model_len", cfg.max_model_len)
        if cfg.enforce_eager:
            kw.setdefault("enforce_eager", True)
    return kw


def backend_for(cfg: GenerateConfig, **overrides) -> GenerationBackend:
    """The generation backend the config asks for (the hf backend also gets --device/--dtype)."""
    from bonsynth.generate.backends import make_backend, resolve_backend_name

    name = resolve_backend_name(cfg.backend)
    kw = dict(backend_kwargs(cfg, name), **overrides)
    return make_backend(name, cfg.policy, **kw)


def check_model_sources(cfg: GenerateConfig, *, policy: bool = True, rewards: bool = True) -> None:
    """Fail fast, before any model loads or any output is written, on a missing model or pickle-only weights."""
    from bonsynth.models import check_model_source

    if policy and cfg.backend != "openai":
        check_model_source(cfg.policy, what="policy", allow_unsafe_weights=cfg.allow_unsafe_weights)
    for path in cfg.rewards if rewards else ():
        check_model_source(path, what="reward model", allow_unsafe_weights=cfg.allow_unsafe_weights)


class NonFiniteGuard:
    """Stops a run whose RM gives NaN or inf for more than `max_share` of the candidates the run will score.

    The budget is a share of the run's planned candidates (prompts x N), not of those seen so far, so where
    a run stops does not depend on the batch size. The count lives in state.json, so it survives a resume.
    """

    def __init__(self, cfg: GenerateConfig, state: dict, num_prompts: int) -> None:
        self.max_share = float(cfg.max_nonfinite)
        self.planned = num_prompts * cfg.n
        self.state = state
        self.rewards = ", ".join(cfg.rewards)

    def check(self, rows: dict[str, list[dict]]) -> None:
        """Count this batch's non-finite rewards; raise before it is written if the budget is exceeded."""
        cand_rows = rows[outputs.CANDIDATES]
        bad = sum(row.get("nonfinite_rewards", 0) for row in cand_rows)
        if not bad:
            return
        total = int(self.state.get("nonfinite_rewards", 0)) + bad
        if total > self.max_share * self.planned:
            first = next(row["id"] for row in cand_rows if row.get("nonfinite_rewards"))
            raise ConfigError(
                f"reward model {self.rewards} gave NaN/inf rewards ({total} of the run's {self.planned} candidates "
                f"so far; first in this batch at prompt id {first!r}): the RM is likely broken. Such candidates are "
                f"never selected; to go on anyway, allow a share with --max-nonfinite (now {self.max_share:g})"
            )
        self.state["nonfinite_rewards"] = total


def load_generation_prompts(cfg: GenerateConfig) -> PromptSource:
    """Validate the whole prompts file now (bad input fails before anything is written), without keeping it:
    the run reads it again batch by batch (`FilePrompts`), so memory does not grow with the number of prompts."""
    prompts = FilePrompts.open(cfg.prompts, fmt=cfg.prompt_format or "auto", limit=cfg.limit,
                               skip_invalid=cfg.skip_invalid)
    if cfg.show_progress or prompts.skipped.count:
        prompts.skipped.report()
    return prompts


def run_generate(
    cfg: GenerateConfig,
    *,
    backend: GenerationBackend | None = None,
    scorer: Scorer | None = None,
    prompts: PromptSource | Sequence[PromptRecord] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict:
    """Run best-of-N and return the manifest. `backend`/`scorer` may be passed in to reuse loaded engines.

    `prompts` (records, or a `PromptSource`) replaces reading `cfg.prompts`.
    """
    cfg.validate()
    if prompts is None:
        prompts = load_generation_prompts(cfg)  # bad input fails here, before anything is written
    skipped = getattr(prompts, "skipped", None)
    prompts, shard_info = apply_shard(cfg, prompts)
    check_model_sources(cfg, policy=backend is None, rewards=scorer is None)
    own_scorer, own_backend = scorer is None, backend is None
    try:
        # The lock comes first: a second run on this directory is refused before it loads any model.
        with RunDir.open(cfg, prompts.digest()) as run:
            if scorer is None:
                from bonsynth.rm.ensemble import RewardEnsemble

                scorer = RewardEnsemble.load(cfg.rewards, cfg.reward_weights, **cfg.reward_load_kwargs())
            if backend is None:
                backend = backend_for(cfg)
            if not run.complete:
                _generate_batches(cfg, run, prompts, backend, scorer, on_batch)
            manifest = build_manifest(cfg, run.out, backend, scorer)
            manifest.update(run_extras(cfg, shard_info, skipped))
            run.finish(manifest)
            return manifest
    finally:
        if own_backend and backend is not None:
            backend.close()
        if own_scorer and scorer is not None:
            scorer.close()


def _generate_batches(cfg: GenerateConfig, run: RunDir, prompts: PromptSource,
                      backend: GenerationBackend, scorer: Scorer, on_batch: Callable[[int, int], None] | None) -> None:
    """The remaining batches, each generated, scored, selected and appended durably."""
    from tqdm.auto import tqdm

    selection, sampling, prune = cfg.selection(), cfg.sampling(), cfg.prune()
    guard = NonFiniteGuard(cfg, run.state, len(prompts))
    start = run.prompts_done
    writer = run.writer()
    try:
        n_cands, t_start = 0, time.perf_counter()
        bar = tqdm(total=len(prompts), initial=start, desc="best-of-N", unit="prompt",
                   disable=not cfg.show_progress, dynamic_ncols=True)
        for lo, batch in prompts.batches(cfg.batch_size, start):
            rows = best_of_n_step(batch, backend, scorer, sampling, selection, prune)
            guard.check(rows)
            writer.append_batch(rows, lo + len(batch))
            n_cands += sum(len(row["candidates"]) for row in rows[outputs.CANDIDATES])
            bar.update(len(batch))
            bar.set_postfix(cand_per_s=f"{n_cands / max(1e-9, time.perf_counter() - t_start):.1f}")
            if on_batch is not None:
                on_batch(lo + len(batch), len(prompts))
        bar.close()
    finally:
        writer.close()


def run_extras(cfg: GenerateConfig, shard_info: dict | None, skipped) -> dict:
    """Manifest fields every engine adds: the shard this job ran, and what `--skip-invalid` dropped from the
    prompts file (the whole file's rows)."""
    extras: dict = {}
    if shard_info is not None:
        extras["shard"] = shard_info
    if cfg.skip_invalid and skipped is not None:
        extras["input"] = {"prompts": cfg.prompts, **skipped.to_json()}
    return extras


def build_manifest(cfg: GenerateConfig, out: Path, backend: GenerationBackend, scorer: Scorer) -> dict:
    models = {
        "policy": model_fingerprint(cfg.policy),
        "rewards": [dict(model_fingerprint(p), **d) for p, d in zip(cfg.rewards, scorer.describe(), strict=True)],
    }
    return compose_manifest(asdict(cfg), out, backend.describe(), models, package_versions())


def compose_manifest(config: dict, out: Path, backend: dict, models: dict, versions: dict) -> dict:
    """The manifest, with counts and summary recomputed from OUT/candidates.jsonl (also used by gather)."""
    pruning = config.get("prune_at") is not None or config.get("prune_keep") is not None
    counts, summary = summarize(outputs.iter_jsonl(out / outputs.CANDIDATES), config["n"], pruning=pruning)
    config = redact({k: v for k, v in config.items() if k not in ("resume", "show_progress")
                     and not (k in MANIFEST_IF_SET and v is None)})
    config["out"] = str(Path(config["out"]))
    return {
        "bonsynth_manifest": 1,
        "config": config,
        "backend": backend,
        "models": models,
        "seeds": {"run_seed": config["seed"], "per_prompt": "sha256(run_seed, prompt id) -> 31-bit seed"},
        "versions": versions,
        "counts": counts,
        "summary": summary,
        "files": {name: name for name in outputs.DATA_FILES},
    }
