"""`bonsynth prompts synth`: grow a prompt set from a few seeds with the policy (Self-Instruct / Unnatural
Instructions style), filtered and deduplicated (`bonsynth.data.synth`).

Request i shows the policy `shots` seeds drawn with an RNG seeded by `prompt_seed(seed, "synth-request-i")`
and asks for a new prompt; its generation seed comes from the same run seed and the request's id, through the
same backends as `generate`. Candidates go through the filters in request order and the run stops at the K-th
accepted one, so the output depends on the seed and the settings only, not on batching or interruptions.

Resume: each finished batch of requests is appended (fsynced) to `OUT.partial` as one JSON line (its accepted
rows and filter counts); `--resume` replays those lines (the accepted prompts go back into the dedup index)
and continues with the next request. The final prompts file and its manifest are written atomically, and the
partial file is removed once both are in place.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from bonsynth.data.normalize import Skipped
from bonsynth.data.readers import iter_prompts
from bonsynth.data.records import PromptRecord
from bonsynth.data.synth import (
    FILTERS,
    FilterSettings,
    Seed,
    SynthFilter,
    build_request,
    clean_candidate,
    load_template,
    seeds_from_records,
)
from bonsynth.data.writers import (
    append_jsonl_durable,
    repair_jsonl_tail,
    write_jsonl_atomic,
    write_text_atomic,
)
from bonsynth.errors import ConfigError, io_errors
from bonsynth.generate.backends.base import GenerationBackend, SamplingConfig
from bonsynth.generate.seeding import prompt_seed
from bonsynth.settings import UNSAFE_WEIGHTS_HELP, FieldError, check_declared, setting


@dataclass
class SynthConfig:
    """What `bonsynth prompts synth` (and a loop's `synth` step) runs with, checked when built; its fields are the
    command's options, with the filters' thresholds in `filters` (`FilterSettings`, options of their own)."""

    seeds: str = setting(help="Seed prompts (any prompts file `bonsynth generate` reads: prompt or messages).")
    policy: str = setting(help="The model that writes the new prompts: local path or hub id (or the served model name "
                               "for openai).")
    num: int = setting(type=int, ge=1, help="How many new prompts to write (K).")
    out: str = setting(metavar="PATH", help="Output prompts JSONL; its manifest goes beside it as NAME.manifest.json.")
    backend: str = setting("auto", choices=("auto", "vllm", "hf", "openai"),
                           help="auto: vllm when installed with a GPU, else hf.")
    template: str | None = setting(None, type=str, help="Request template file with {examples} (and {card} for chat "
                                                        "seeds); default: the one shipped in bonsynth/data/synth_prompts/.")
    shots: int = setting(3, ge=1, help="Seed examples shown in each request.")
    per_request: int = setting(1, ge=1, help="Completions per request.")
    seed: int = setting(0)
    temperature: float = setting(1.0, ge=0)
    top_p: float = setting(1.0, gt=0, le=1)
    max_new_tokens: int = setting(128, ge=1)
    batch_size: int = setting(32, ge=1, help="Requests per durable batch.")
    max_requests: int | None = setting(None, type=int, ge=1, help="Stop after this many requests even if fewer than --num "
                                                            "prompts passed (default 20 x --num).")
    filters: FilterSettings = setting(default_factory=FilterSettings, cli=False)
    skip_invalid: bool = setting(False, help="Drop seed rows that fail validation (listed in the manifest) instead of "
                                             "stopping at the first.")
    resume: bool = setting(False, help="Continue an interrupted run of the same settings into OUT.")
    overwrite: bool = setting(False, help="Replace an existing OUT (or an interrupted run's partial file).")
    device: str = setting("auto", help="Device for the hf backend.")
    dtype: str = setting("auto", help="auto = bf16 on a GPU, fp32 on the CPU.")
    trust_remote_code: bool = setting(False, negatable=True)
    allow_unsafe_weights: bool = setting(False, help=UNSAFE_WEIGHTS_HELP)
    backend_options: dict = setting(default_factory=dict, cli=False)
    show_progress: bool = setting(True, flag="--quiet", invert=True, help="No progress bar.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """A bad value is a `FieldError` naming the field (the CLI names the flag)."""
        check_declared(self)  # choices and bounds, as each field declares them
        if self.resume and self.overwrite:
            raise FieldError("`resume` and `overwrite` exclude each other")
        self.filters.validate()

    @property
    def request_limit(self) -> int:
        return self.max_requests or 20 * self.num

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(n=self.per_request, temperature=self.temperature, top_p=self.top_p,
                              max_new_tokens=self.max_new_tokens, seed=self.seed)


def output_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """The prompts file, its manifest (`NAME.manifest.json` beside it) and the durable partial file."""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out, out.with_name(stem + ".manifest.json"), out.with_name(out.name + ".partial")


def pick_shots(num_seeds: int, shots: int, run_seed: int, request: int) -> list[int]:
    """The seed positions request `request` shows (distinct while there are enough seeds)."""
    rng = random.Random(prompt_seed(run_seed, request_id(run_seed, request), salt="shots"))
    if shots <= num_seeds:
        return rng.sample(range(num_seeds), shots)
    return [rng.randrange(num_seeds) for _ in range(shots)]


def request_id(run_seed: int, request: int) -> str:
    return f"synth-request-{run_seed}-{request}"


def synth_id(run_seed: int, position: int) -> str:
    """A synthesised prompt's id, from the run seed and its position in the output (stable across resumes)."""
    return f"synth-{run_seed}-{position:06d}"


def make_row(seed_kind: str, shots: list[Seed], text: str, run_seed: int, position: int, request: int) -> dict:
    """A prompts row `bonsynth generate` reads as is; it records the seeds it was made from."""
    row: dict = {"id": synth_id(run_seed, position)}
    if seed_kind == "chat":
        row["messages"] = [*map(dict, shots[0].context or ()), {"role": "user", "content": text}]
    else:
        row["prompt"] = text
    row["seed_ids"] = [s.id for s in shots]
    row["synth_request"] = request
    return row


def _fingerprint(cfg: SynthConfig, seeds_digest: str, template_sha: str) -> str:
    d = {"seeds": seeds_digest, "policy": cfg.policy, "num": cfg.num, "template": template_sha, "shots": cfg.shots,
         "per_request": cfg.per_request, "seed": cfg.seed, "temperature": cfg.temperature, "top_p": cfg.top_p,
         "max_new_tokens": cfg.max_new_tokens, "filters": asdict(cfg.filters), "max_requests": cfg.request_limit}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _seeds_digest(records: list[PromptRecord]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.id, r.prompt], ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
    return h.hexdigest()


def _read_partial(path: Path, fingerprint: str) -> list[dict]:
    """The batches a previous run finished (after its header line), checked against this run's settings."""
    repair_jsonl_tail(path)
    with io_errors(path):
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines or lines[0].get("fingerprint") != fingerprint:
        raise ConfigError(f"{path}: the interrupted run had other settings (seeds, model, template, seed or "
                          f"filters); rerun with the same ones, or pass --overwrite to start again")
    return lines[1:]


def _backend(cfg: SynthConfig) -> GenerationBackend:
    """The policy backend, built exactly as `generate` builds it (same kwargs, device and dtype handling)."""
    from bonsynth.generate.pipeline import GenerateConfig, backend_for, check_model_sources

    gcfg = GenerateConfig(policy=cfg.policy, rewards=[], prompts=cfg.seeds, out=cfg.out, backend=cfg.backend,
                          device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                          allow_unsafe_weights=cfg.allow_unsafe_weights, backend_options=dict(cfg.backend_options))
    check_model_sources(gcfg, rewards=False)
    return backend_for(gcfg)


def run_synth(cfg: SynthConfig, backend: GenerationBackend | None = None) -> dict:
    """Synthesise `cfg.num` prompts; returns the manifest (also written beside the output)."""
    from tqdm.auto import tqdm

    cfg.validate()
    out, manifest_path, partial_path = output_paths(cfg.out)
    skipped = Skipped()
    records = list(iter_prompts(cfg.seeds, skip_invalid=cfg.skip_invalid, skipped=skipped))
    skipped.report()
    kind, seeds = seeds_from_records(records, cfg.seeds)
    template = load_template(kind, cfg.template)
    fingerprint = _fingerprint(cfg, _seeds_digest(records), template.sha256)

    done: list[dict] = []
    if cfg.resume:
        if partial_path.exists():
            done = _read_partial(partial_path, fingerprint)
        elif out.exists():
            manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {}
            if manifest.get("fingerprint") == fingerprint:
                return manifest  # already complete
            raise ConfigError(f"{out} is not a finished run with these settings; pass --overwrite to replace it")
    elif not cfg.overwrite:
        for p in (out, partial_path):
            if p.exists():
                what = "an interrupted run (pass --resume to continue it)" if p == partial_path else "there"
                raise ConfigError(f"{p} is already {what}; pass --overwrite to start again")

    filt = SynthFilter(seeds, cfg.filters)
    rows: list[dict] = []
    counts: Counter = Counter()
    next_request = 0
    for batch in done:
        for row in batch["rows"]:
            filt.restore(row["prompt"] if kind == "text" else row["messages"][-1]["content"])
            rows.append(row)
        counts.update(batch["counts"])
        next_request = batch["requests"][1]
    filt.counts.update(counts)
    filt.accepted = len(rows)

    own_backend = backend is None
    backend = backend or _backend(cfg)
    sampling = cfg.sampling()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not done:
        with io_errors(partial_path):
            if partial_path.exists():
                partial_path.unlink()
            append_jsonl_durable(partial_path, [{"fingerprint": fingerprint, "seeds": cfg.seeds}])
    started = time.perf_counter()
    bar = tqdm(total=cfg.num, initial=len(rows), desc="synth", unit="prompt", disable=not cfg.show_progress,
               dynamic_ncols=True)
    try:
        while len(rows) < cfg.num and next_request < cfg.request_limit:
            lo, hi = next_request, min(next_request + cfg.batch_size, cfg.request_limit)
            shot_lists = [[seeds[j] for j in pick_shots(len(seeds), cfg.shots, cfg.seed, i)] for i in range(lo, hi)]
            reqs = [PromptRecord(id=request_id(cfg.seed, i), prompt=[{"role": "user",
                                                                       "content": build_request(template, shots)}])
                    for i, shots in zip(range(lo, hi), shot_lists, strict=True)]
            results = backend.generate(reqs, sampling)
            before = Counter(filt.counts)
            new_rows: list[dict] = []
            end = hi
            for i, shots, res in zip(range(lo, hi), shot_lists, results, strict=True):
                for comp in res.completions:
                    text = clean_candidate(comp.text)
                    if filt.accept(text) is None:
                        new_rows.append(make_row(kind, shots, text, cfg.seed, len(rows) + len(new_rows), i))
                        if len(rows) + len(new_rows) >= cfg.num:
                            break
                if len(rows) + len(new_rows) >= cfg.num:
                    end = i + 1
                    break
            delta = {k: filt.counts[k] - before[k] for k in FILTERS}
            append_jsonl_durable(partial_path, [{"requests": [lo, end], "rows": new_rows, "counts": delta}])
            rows.extend(new_rows)
            next_request = end
            bar.update(len(new_rows))
    finally:
        bar.close()
        if own_backend:
            backend.close()

    elapsed = time.perf_counter() - started
    total_counts = {k: filt.counts[k] for k in FILTERS}
    manifest = {
        "kind": "prompts-synth",
        "fingerprint": fingerprint,
        "seeds": {"path": cfg.seeds, "count": len(seeds), "kind": kind, "sha256": _seeds_digest(records),
                  "skipped_invalid": skipped.to_json()},
        "model": cfg.policy,
        "backend": backend.describe(),
        "seed": cfg.seed,
        "template": {"path": template.path, "sha256": template.sha256},
        "shots": cfg.shots,
        "per_request": cfg.per_request,
        "sampling": sampling.to_dict(),
        "filters": filt.describe(),
        "num_requested": cfg.num,
        "num_written": len(rows),
        "complete": len(rows) >= cfg.num,
        "requests": next_request,
        "candidates": sum(total_counts.values()) + len(rows),
        "counts": {**total_counts, "accepted": len(rows)},
        "elapsed_s_this_session": round(elapsed, 3),
        "output": str(out),
    }
    if not manifest["complete"]:
        manifest["warning"] = (f"only {len(rows)} of {cfg.num} prompts passed the filters within "
                               f"{cfg.request_limit} requests (--max-requests); see counts")
    write_jsonl_atomic(out, rows)
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    with io_errors(partial_path):
        partial_path.unlink(missing_ok=True)
    return manifest
