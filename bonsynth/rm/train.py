"""`bonsynth rm train`: train a reward model (pairwise, binary or ranked) and save it as a plain HF model.

* pairwise: Bradley–Terry loss -log σ(r⁺ - r⁻ - margin) through TRL's `RewardTrainer`, fed pre-tokenized
  `chosen_ids`/`rejected_ids` (TRL would tokenize the whole text and drop over-long pairs; we cut the prompt
  instead, with the same ids the scorer uses).
* binary: a 2-label classifier (label 1 = good) through transformers' `Trainer`, like Chai's thumbs-up RMs.
* ranked: every group is expanded into its strictly ordered pairs and trained with the pairwise loss; the
  eval split is made of whole groups, so NDCG is measured on groups the model never saw.

Model set-up follows open-instruct: dropout off, right padding, a pad token added when the tokenizer has none,
and a fresh score head drawn with std = 1/sqrt(hidden + 1). LoRA (peft) is optional and merged before saving,
so the output directory is always a plain model that `AutoModelForSequenceClassification` and
`pipeline("text-classification")` load unchanged, with `bonsynth_rm.json` beside it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bonsynth.errors import ConfigError, InputError
from bonsynth.modelref import is_hub_id
from bonsynth.models import checkpointing_args
from bonsynth.rm.meta import RMMeta, file_sha256
from bonsynth.settings import FieldError, check_declared, setting

TRAIN_OBJECTIVES = ("pairwise", "binary", "ranked")
# transformers' scheduler names that make sense for a short fine-tune (`--lr-scheduler`)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "warmup_stable_decay")
AVERAGE_METHODS = ("linear",)  # weight averaging of the `--seeds` members (WARM), through bonsynth merge
LABEL_MAPPINGS = {
    "pairwise": {"0": "reward"},
    "ranked": {"0": "reward"},
    "binary": {"0": "bad", "1": "good"},
}
log = logging.getLogger(__name__)
_STATS_SAMPLE = 512  # examples scored for mean/std (and train metrics) when there is no eval split


SKIP_INVALID_HELP = ("Drop rows that fail validation instead of stopping at the first: each is printed on stderr "
                     "(file:line: field), and their count and lines are recorded in the output.")


@dataclass
class RMTrainConfig:
    """Options of `bonsynth rm train`: each field says its flag and help (`bonsynth.settings`), and the CLI's
    options are generated from them; `cli=False` fields are library and benchmark knobs."""

    base: str = setting(help="Path or hub id of the base model.")
    data: list[str] = setting(multiple=True, help="Training data file(s); repeatable.")
    objective: str = setting(choices=TRAIN_OBJECTIVES)
    out: str | Path = setting(metavar="DIR")
    fmt: str = setting("auto", flag="--format", choices=("auto", "pairwise", "binary", "ranked", "prompts"),
                       help="Override kind detection.")
    epochs: float = setting(1.0, gt=0)
    lr: float = setting(5e-5, gt=0)
    batch_size: int = setting(8, ge=1)
    grad_accum: int = setting(1, ge=1)
    max_length: int = setting(512, ge=2)
    lora_r: int = setting(0, ge=0, help="LoRA rank (0 = full fine-tune).")
    eval_split: float = setting(0.1, ge=0, lt=1)
    seed: int = setting(42)
    report_to: str = setting("none", help="Trainer report_to (none, tensorboard, wandb).")
    trust_remote_code: bool = setting(False, negatable=True)
    # drop rows that fail validation (reported, counted in the summary) instead of failing
    skip_invalid: bool = setting(False, help=SKIP_INVALID_HELP)
    overwrite: bool = setting(False, help="Replace a non-empty --out (once the new model is complete).")
    warmup_ratio: float = setting(0.0, ge=0, lt=1, help="Share of the optimiser steps spent warming the learning rate up from 0.")
    lr_scheduler: str = setting("linear", choices=LR_SCHEDULERS,
                                help="Learning-rate schedule after the warm-up (transformers' names).")
    center_rewards: float | None = setting(
        None, type=float, ge=0, help="TRL's center_rewards_coefficient: adds c * mean((r+ + r-)^2) to the loss, pulling "
                               "rewards towards 0 (pairwise and ranked; TRL suggests 0.01).")
    eval_every: int | str = setting(
        0, type=str, metavar="STEPS|epoch",
        help="Measure the eval split every N optimiser steps or every epoch (and at the end); keep the best "
             "checkpoint by eval accuracy (0 = off: keep the last).")
    early_stopping: int = setting(0, ge=0, help="Stop after this many --eval-every evaluations without a better one "
                                          "(0 = off).")
    seeds: list[int] | None = setting(
        None, type=str, metavar="S1,S2,...",
        help="WARM: train one member per seed on the same split and average their weights into --out.")
    average: str | None = setting(None, choices=AVERAGE_METHODS,
                                  help="How --seeds members are averaged (bonsynth merge's method; default linear).")
    keep_members: bool = setting(False, help="With --seeds: also keep each member under OUT/members/seed-K.")
    # not on the command line: library / benchmark knobs
    # also load a pickle-only base (the loop's rm_update, when its recipe opts in)
    allow_unsafe_weights: bool = setting(False, cli=False)
    lora_alpha: int | None = setting(None, cli=False)  # default 2 * lora_r
    lora_dropout: float = setting(0.0, cli=False)
    lora_target_modules: list[str] | str | None = setting(None, cli=False)  # default: peft's choice
    weight_decay: float = setting(0.0, cli=False)
    logging_steps: int = setting(10, ge=1, cli=False)
    eval_batch_size: int | None = setting(None, cli=False)
    gradient_checkpointing: bool = setting(False, cli=False)
    disable_tqdm: bool | None = setting(None, cli=False)
    # the eval split and the new head's draw (default: `seed`); WARM members share the run's, so they start from
    # one point and differ only in data order (Ramé et al.: a shared init keeps the members in one basin, where
    # averaging their weights works)
    init_seed: int | None = setting(None, cli=False)
    extra: dict = setting(default_factory=dict, cli=False)  # free-form notes stored in bonsynth_rm.json

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, Path)):
            self.data = [str(self.data)]
        self.data = [str(d) for d in self.data]
        self.eval_every = _eval_every(self.eval_every)
        if self.objective not in TRAIN_OBJECTIVES:
            raise FieldError(f"unknown `objective` {self.objective!r}; expected one of {', '.join(TRAIN_OBJECTIVES)}")
        if not self.data:
            raise FieldError("no training data: give at least one `data` file")
        check_declared(self)  # choices and bounds, as each field declares them
        if self.center_rewards is not None and not math.isfinite(self.center_rewards):
            raise FieldError(f"`center_rewards` must be a finite coefficient >= 0, got {self.center_rewards}")
        if self.center_rewards is not None and self.objective == "binary":
            raise FieldError("`center_rewards` applies to the pairwise and ranked losses, not to `objective` binary")
        if self.eval_every != 0 and self.eval_split == 0:
            raise FieldError("`eval_every` needs an eval split to measure on (`eval_split` > 0)")
        if self.early_stopping != 0 and self.eval_every == 0:
            raise FieldError("`early_stopping` counts evaluations: give `eval_every` too")
        self._check_members()

    def _check_members(self) -> None:
        if self.seeds is not None:
            try:
                seeds = [int(x) for x in (self.seeds.split(",") if isinstance(self.seeds, str) else self.seeds)]
            except ValueError:
                raise FieldError(f"`seeds` must be comma-separated integers, e.g. 0,1,2 (got {self.seeds!r})") from None
            if len(seeds) < 2 or len(set(seeds)) != len(seeds):
                raise FieldError(f"`seeds` needs two or more different seeds to average, got {self.seeds!r}")
            self.seeds = seeds
            self.average = self.average or "linear"
        if self.average is not None:
            if self.average not in AVERAGE_METHODS:
                raise FieldError(f"`average` {self.average!r} is not one of {', '.join(AVERAGE_METHODS)}")
            if self.seeds is None:
                raise FieldError("`average` averages the members that `seeds` trains: give `seeds` too")
        if self.keep_members and self.seeds is None:
            raise FieldError("`keep_members` keeps the members that `seeds` trains: give `seeds` too")

    def member(self, seed: int) -> RMTrainConfig:
        """One WARM member: this run with its own seed, on the run's eval split."""
        from dataclasses import replace

        return replace(self, seed=seed, seeds=None, average=None, keep_members=False,
                       init_seed=self.shared_seed)

    @property
    def shared_seed(self) -> int:
        """The seed of the eval split and of the head initialisation."""
        return self.seed if self.init_seed is None else self.init_seed

    @property
    def num_labels(self) -> int:
        return 2 if self.objective == "binary" else 1


def _eval_every(value: int | str) -> int | str:
    """`--eval-every`: a number of optimiser steps, or `epoch` (at each epoch's end, whatever its length after
    over-long pairs are dropped)."""
    if value == "epoch":
        return value
    try:
        steps = int(value)
    except (TypeError, ValueError):
        steps = -1
    if steps < 0 or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise FieldError(f"`eval_every` must be 0 (off), a number of steps or 'epoch', got {value!r}")
    return steps


def train_reward_model(cfg: RMTrainConfig) -> dict[str, Any]:
    """Train, merge, save (model + tokenizer + bonsynth_rm.json) and return a summary with eval metrics."""
    from bonsynth.outdir import build_dir_atomic, check_output_dir

    if cfg.seeds is not None:  # the merge layer sits above this one: it trains the members, then averages them
        raise ConfigError("seeds: a WARM run (members averaged by bonsynth merge) is bonsynth.merge.warm.train_warm")
    start = time.perf_counter()
    out = check_output_dir(cfg.out, overwrite=cfg.overwrite, what="--out")  # before any long work
    report_to = _report_to(cfg.report_to)
    records, hashes, skips = _load_data(cfg)  # user errors in the data surface before any model is loaded
    if cfg.objective == "ranked":
        _report_tied_groups([g for g in records if len(set(g.scores)) < 2], len(records))
    train_recs, eval_recs = split_records(records, cfg.eval_split, cfg.shared_seed)
    if not train_recs:
        raise InputError(
            f"only {len(records)} example(s): nothing left to train on after the eval split "
            f"(--eval-split {cfg.eval_split})",
            path=cfg.data[0],
        )

    import transformers

    transformers.set_seed(cfg.shared_seed)  # the head's draw; the Trainer reseeds with `seed` for the data order
    model, tokenizer, max_length = load_base_model(cfg)
    from bonsynth.rm.model import RewardModel

    meta = RMMeta(
        objective=cfg.objective,
        num_labels=cfg.num_labels,
        label_mapping=dict(LABEL_MAPPINGS[cfg.objective]),
        data_hashes=hashes,
        base_model=str(cfg.base),
        max_length=max_length,
    )
    encoder = RewardModel.from_model(model, tokenizer, meta, max_length=max_length)
    dataset, counts = build_train_dataset(cfg.objective, train_recs, encoder)
    counts.update(skips)  # what --skip-invalid dropped, in the summary and bonsynth_rm.json

    lora = cfg.lora_r > 0
    if lora:
        model = _wrap_lora(model, cfg)
    # Everything (the Trainer's output_dir included) is built in a temp directory beside OUT and renamed into
    # place at the end: a failed run (disk full, Ctrl-C, a bad batch) leaves OUT as it was, or absent.
    with build_dir_atomic(out, overwrite=cfg.overwrite, what="--out") as work:
        summary = _train_and_save(cfg, model, tokenizer, dataset, counts, meta, train_recs, eval_recs, work, out,
                                  report_to, max_length, lora, start)
    return summary


def _train_and_save(cfg: RMTrainConfig, model: Any, tokenizer: Any, dataset: Any, counts: dict, meta: RMMeta,
                    train_recs: list, eval_recs: list, work: Path, out: Path, report_to: list[str],
                    max_length: int, lora: bool, start: float) -> dict[str, Any]:
    """Train in `work` (the temp directory that becomes `out`), measure the reward stats, save there."""
    from bonsynth.rm.model import RewardModel

    # Trainer chatter (log dicts) goes to stderr: stdout carries the JSON summary the CLI prints.
    best = None
    with contextlib.redirect_stdout(sys.stderr):
        trainer = _make_trainer(cfg, model, tokenizer, dataset, work, report_to, run_name=out.name)
        if cfg.eval_every:
            best = BestCheckpoint.callback(
                lambda m: evaluate_split(RewardModel.from_model(m, tokenizer, meta, max_length=max_length,
                                                                prefix_sharing="off"),
                                         cfg.objective, eval_recs, cfg.eval_batch_size)[0],
                every=cfg.eval_every, patience=cfg.early_stopping)
            trainer.add_callback(best)
        train_output = trainer.train()
    model = trainer.model
    if best is not None:
        best.restore(model)
    if lora:
        model = model.merge_and_unload()
    model.eval()

    scorer = RewardModel.from_model(model, tokenizer, meta, max_length=max_length)
    split_name, stat_recs = ("eval", eval_recs) if eval_recs else ("train", _sample(train_recs, cfg.seed))
    metrics, rewards = evaluate_split(scorer, cfg.objective, stat_recs, cfg.eval_batch_size)
    meta.reward_mean, meta.reward_std = reward_stats(rewards)
    meta.reward_stats_source = f"train:{split_name}"
    prefixed = {f"{split_name}_{k}": v for k, v in metrics.items()}
    with contextlib.redirect_stdout(sys.stderr):
        trainer.log({k: float(v) for k, v in prefixed.items() if isinstance(v, (int, float)) and math.isfinite(v)})

    seconds = time.perf_counter() - start
    summary: dict[str, Any] = {
        "out": str(out),
        "objective": cfg.objective,
        "base": str(cfg.base),
        "num_train": len(train_recs),
        "num_eval": len(eval_recs),
        **counts,
        "max_length": max_length,
        "lora_r": cfg.lora_r,
        "train_loss": float(train_output.training_loss),
        "reward_mean": meta.reward_mean,
        "reward_std": meta.reward_std,
        "stats_split": split_name,
        **prefixed,
        "seconds": round(seconds, 2),
    }
    if best is not None:
        summary.update(best.summary())
    meta.extra = {
        **cfg.extra,
        "training": {
            k: v
            for k, v in asdict(cfg).items()
            if k not in ("base", "data", "out", "extra", "disable_tqdm", "report_to", "overwrite")
        },
        "summary": {k: v for k, v in summary.items() if k not in ("out", "base", "objective")},
    }
    save_reward_model(model, tokenizer, meta, work)
    return _json_safe(summary)


# ---------------------------------------------------------------------------------------------------- data


def _load_data(cfg: RMTrainConfig) -> tuple[list, dict[str, str], dict[str, Any]]:
    from bonsynth.data.readers import load_records

    records: list = []
    hashes: dict[str, str] = {}
    skips: dict[str, Any] = {"num_skipped_invalid": 0, "skipped_lines": {}} if cfg.skip_invalid else {}
    for path in cfg.data:
        data = load_records(path, cfg.fmt, skip_invalid=cfg.skip_invalid)
        if data.skipped.count:  # only with skip_invalid: reported now, and per file in the summary
            data.skipped.report()
            skips["num_skipped_invalid"] += data.skipped.count
            skips["skipped_lines"][str(path)] = data.skipped.lines
        if data.kind != cfg.objective:
            hint = (
                "it holds prompts only; training needs pairwise, binary or ranked data"
                if data.kind == "prompts"
                else f"use --objective {data.kind}"
            )
            raise InputError(f"{data.kind} data does not fit --objective {cfg.objective} ({hint})", path=path)
        if not data.records:
            raise InputError("no examples", path=path)
        records.extend(data.records)
        p = Path(path)
        hashes[str(path)] = file_sha256(p) if p.exists() else "hub:" + str(path)
    return records, hashes, skips


def split_records(records: list, eval_split: float, seed: int) -> tuple[list, list]:
    """A seeded shuffle, then the last `eval_split` share (at least one when > 0) held out for evaluation.

    Ranked data is split by group, so a prompt's responses are never on both sides.
    """
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = 0
    if eval_split > 0 and len(records) >= 2:
        n_eval = min(len(records) - 1, max(1, round(len(records) * eval_split)))
    train = [records[i] for i in order[: len(records) - n_eval]]
    held = [records[i] for i in order[len(records) - n_eval :]]
    return train, held


def _sample(records: list, seed: int) -> list:
    if len(records) <= _STATS_SAMPLE:
        return records
    return random.Random(seed + 1).sample(records, _STATS_SAMPLE)


_MAX_TIE_WARNINGS = 10


def _describe_group(group: Any) -> str:
    """file:line, id and the start of the prompt of a ranked group, for messages."""
    where = str(group.source) if group.source is not None else "ranked data"
    prompt = group.prompt if isinstance(group.prompt, str) else " ".join(
        str(m.get("content", "")) for m in group.prompt if isinstance(m, dict))
    prompt = " ".join(prompt.split())
    snippet = prompt[:60] + ("..." if len(prompt) > 60 else "")
    return f"{where}: group '{group.group_id}' (prompt {snippet!r})"


def _report_tied_groups(tied: list, total: int) -> None:
    """A group whose scores are all equal yields no pair: a warning per group, an error if every group is one."""
    if not tied:
        return
    if len(tied) == total:
        first = tied[0]
        src = first.source
        raise InputError(
            f"every ranked group is a tie ({total} group(s), e.g. group '{first.group_id}'): all of a group's "
            "scores are equal and ties carry no preference, so there are no pairs to train on",
            path=src.path if src is not None else None,
            line=src.line if src is not None else None,
            field="scores",
        )
    for group in tied[:_MAX_TIE_WARNINGS]:
        log.warning("warning: %s: all scores are equal; ties carry no preference, so this group is not trained on",
                    _describe_group(group))
    if len(tied) > _MAX_TIE_WARNINGS:
        log.warning("warning: %d more all-tied ranked groups are not trained on", len(tied) - _MAX_TIE_WARNINGS)


def build_train_dataset(objective: str, records: list, encoder: Any) -> tuple[Any, dict[str, int]]:
    """A `datasets.Dataset` of token ids for the trainer, and how many examples were truncated / dropped."""
    from datasets import Dataset

    from bonsynth.rm.encode import encode_binary, encode_groups, encode_pairs

    counts = {"num_truncated": 0, "num_dropped": 0}
    if objective == "binary":
        encs = encode_binary(encoder, records)
        rows = {"input_ids": [], "labels": []}
        for rec, e in zip(records, encs, strict=True):
            counts["num_truncated"] += e.truncated
            if not e.fits:
                counts["num_dropped"] += 1
                continue
            rows["input_ids"].append(e.input_ids)
            rows["labels"].append(int(rec.label))
    else:
        rows = {"chosen_ids": [], "rejected_ids": [], "margin": []}
        if objective == "pairwise":
            chosen, rejected = encode_pairs(encoder, records)
            examples = [
                ([(c, r, p.margin)], c.truncated or r.truncated)
                for p, c, r in zip(records, chosen, rejected, strict=True)
            ]
        else:  # ranked: one example = one group, expanded into its ordered pairs
            examples = []
            tied = []
            for group, encs in zip(records, encode_groups(encoder, records), strict=True):
                pairs = [
                    (encs[i], encs[j], 0.0)
                    for i in range(len(encs))
                    for j in range(len(encs))
                    if group.scores[i] > group.scores[j]
                ]
                if not pairs:
                    tied.append(group)
                    continue  # reported when the data was read; not a length drop
                examples.append((pairs, any(e.truncated for e in encs)))
            counts["num_tied_groups"] = len(tied)
        for pairs, truncated in examples:
            counts["num_truncated"] += bool(truncated)
            kept = [(c, r, m) for c, r, m in pairs if c.fits and r.fits]
            if len(kept) < len(pairs) or not pairs:
                counts["num_dropped"] += 1
            for c, r, m in kept:
                rows["chosen_ids"].append(c.input_ids)
                rows["rejected_ids"].append(r.input_ids)
                rows["margin"].append(float(m))
        if objective == "ranked":
            counts["num_train_pairs"] = len(rows["chosen_ids"])
        if not any(rows["margin"]):
            del rows["margin"]  # TRL then uses the plain -log σ(r⁺ - r⁻)
    n = len(rows["input_ids"] if objective == "binary" else rows["chosen_ids"])
    if n == 0:
        raise InputError(
            "no trainable examples: every response is longer than --max-length on its own"
            if counts["num_dropped"]
            else "no trainable pairs: every ranked group left for training is a tie (all its scores are equal; "
            "ties carry no preference)"
        )
    return Dataset.from_dict(rows), counts


# ---------------------------------------------------------------------------------------------------- model


def load_base_model(cfg: RMTrainConfig) -> tuple[Any, Any, int]:
    """The base as a sequence classifier set up the open-instruct way; returns (model, tokenizer, max_length)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from bonsynth.modelref import resolve_model_ref
    from bonsynth.models import (
        TOKENIZER_FILES,
        check_remote_code,
        check_safetensors_file,
        check_tokenizer,
        has_tokenizer_files,
    )
    from bonsynth.rm.encode import model_length_limit, prepare_tokenizer

    base = resolve_model_ref(str(cfg.base))
    path = Path(base).expanduser()
    local = path.exists()
    trc = cfg.trust_remote_code
    if local:
        if not path.is_dir():
            raise ConfigError(f"base model {base} is a file, not a model directory")
        if not (path / "config.json").exists():
            raise ConfigError(f"base model not found: {base} (no config.json in the directory)")
        base = str(path)
        check_remote_code(path, trust_remote_code=trc, what="base model")
        if not has_tokenizer_files(path):
            raise ConfigError(f"base model directory {base} has no tokenizer (none of "
                              f"{', '.join(TOKENIZER_FILES[:5])})")
        shards = sorted(path.glob("*.safetensors"))
        for shard in shards:
            check_safetensors_file(shard, what="base model")
    elif not is_hub_id(base):
        raise ConfigError(f"base model not found: {base} (no such directory)")
    try:
        config = AutoConfig.from_pretrained(base, trust_remote_code=trc)
        tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=trc)
    except (OSError, ValueError) as e:
        if not local:
            raise ConfigError(f"base model not found: {base} (no such directory, and not available from the Hub: "
                              f"{_first_line(e)})") from None
        raise ConfigError(f"cannot load base model {base}: {_first_line(e)}") from None
    check_tokenizer(tokenizer, base, what="base model")
    if getattr(config, "num_labels", None) != cfg.num_labels:
        config.num_labels = cfg.num_labels  # also resets id2label to LABEL_0.. (what Chai-style callers read)
    _zero_dropout_config(config)
    try:
        with _quiet_transformers():  # the "score.weight newly initialized" report is expected here
            model, info = AutoModelForSequenceClassification.from_pretrained(
                base,
                config=config,
                trust_remote_code=trc,
                use_safetensors=None if cfg.allow_unsafe_weights else True,
                dtype=torch.float32,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
    except OSError as e:
        raise ConfigError(f"cannot load base model {base} (safetensors weights only): {_first_line(e)}") from None
    except ValueError as e:
        raise ConfigError(f"{base} cannot be loaded as a sequence classifier: {_first_line(e)}") from None

    if prepare_tokenizer(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    fresh = {k.rsplit(".", 1)[0] for k in (*info.get("missing_keys", ()), *_mismatched(info))}
    init_score_head(model, cfg.num_labels, fresh)

    limit = model_length_limit(model.config, tokenizer)
    max_length = min(cfg.max_length, limit) if limit else cfg.max_length
    return model, tokenizer, max_length


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _mismatched(info: dict) -> list[str]:
    out = []
    for item in info.get("mismatched_keys", ()):
        out.append(item[0] if isinstance(item, (tuple, list)) else item)
    return out


def _zero_dropout_config(config: Any) -> None:
    """Dropout off in the config too: some attention code reads the rate from the config, not a module."""
    for name, value in list(vars(config).items()):
        if isinstance(value, float) and not isinstance(value, bool) and ("dropout" in name or name.endswith("pdrop")):
            setattr(config, name, 0.0)


def disable_dropout(model: Any) -> None:
    """Every dropout module to p=0: an RM's reward must not depend on a random mask (Ziegler et al. 2019)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def find_score_head(model: Any, num_labels: int, fresh: set[str] | None = None) -> Any:
    """The output Linear of the classifier: a newly initialised one if known, else the last with num_labels outputs."""
    import torch

    candidates = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m.out_features == num_labels
    ]
    for name, m in candidates:
        if fresh and name in fresh:
            return m
    return candidates[-1][1] if candidates else None


def init_score_head(model: Any, num_labels: int, fresh: set[str]) -> bool:
    """Draw a new head with std = 1/sqrt(hidden + 1) (Stiennon et al. 2020); keep an already trained one."""
    import torch

    head = find_score_head(model, num_labels, fresh)
    if head is None:
        return False
    names = {name for name, m in model.named_modules() if m is head}
    if not names & fresh:
        return False  # the head was loaded from the base (an RM already): fine-tune it as it is
    with torch.no_grad():
        head.weight.normal_(mean=0.0, std=1.0 / math.sqrt(head.in_features + 1))
        if head.bias is not None:
            head.bias.zero_()
    return True


def _wrap_lora(model: Any, cfg: RMTrainConfig) -> Any:
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise ConfigError("--lora-r needs the peft package: pip install 'bonsynth[lora]'") from None
    target = cfg.lora_target_modules
    lcfg = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha or 2 * cfg.lora_r,
        lora_dropout=cfg.lora_dropout,
        target_modules=target,
    )
    with warnings.catch_warnings():
        # GPT-2's Conv1D layers: peft switches fan_in_fan_out on by itself and says so
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        try:
            return get_peft_model(model, lcfg)
        except ValueError:
            if target is not None:
                raise ConfigError(f"LoRA target modules {target!r} do not match this model") from None
            lcfg.target_modules = "all-linear"  # an architecture peft has no default for
            return get_peft_model(model, lcfg)


def _report_to(value: str | list[str] | None) -> list[str]:
    """Trainer `report_to`, checked up front: a missing integration is a clear error, not a traceback later."""
    if value is None:
        return []
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if not names or names == ["none"]:
        return []
    from transformers.integrations import get_available_reporting_integrations

    available = get_available_reporting_integrations()
    if names == ["all"]:
        return list(available)
    for name in names:
        if name not in available:
            raise ConfigError(
                f"--report-to {name}: not available (installed: {', '.join(available) or 'none'}); "
                f"install the {name} package or use --report-to none"
            )
    return names


def _training_kwargs(cfg: RMTrainConfig, out: Path, report_to: list[str], run_name: str | None = None) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "output_dir": str(out),
        "num_train_epochs": cfg.epochs,
        "learning_rate": cfg.lr,
        "per_device_train_batch_size": cfg.batch_size,
        "per_device_eval_batch_size": cfg.eval_batch_size or cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "weight_decay": cfg.weight_decay,
        "warmup_steps": cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        "lr_scheduler_type": cfg.lr_scheduler,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "report_to": report_to or "none",
        "logging_steps": cfg.logging_steps,
        "save_strategy": "no",
        "eval_strategy": "no",
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "fp16": False,
        **checkpointing_args(cfg.gradient_checkpointing),
        "disable_tqdm": cfg.disable_tqdm,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": cuda,
        "remove_unused_columns": False,
        "run_name": run_name or Path(out).name,
    }


def _make_trainer(cfg: RMTrainConfig, model: Any, tokenizer: Any, dataset: Any, out: Path, report_to: list[str],
                  run_name: str | None = None) -> Any:
    kwargs = _training_kwargs(cfg, out, report_to, run_name)
    if cfg.objective == "binary":
        from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

        return Trainer(
            model=model,
            args=TrainingArguments(**kwargs),
            train_dataset=dataset,
            data_collator=DataCollatorWithPadding(tokenizer, padding="longest"),
            processing_class=tokenizer,
        )
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(
        **kwargs,
        max_length=None,  # already encoded to fit: TRL would otherwise drop long pairs
        disable_dropout=True,
        center_rewards_coefficient=cfg.center_rewards,
    )
    return RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


# ---------------------------------------------------------------------------------------------------- checkpoints


_LOSS_TIE_BREAK = 1e-6  # a loss change smaller than this is rounding, not progress


def _better(a: dict, b: dict | None) -> bool:
    """Higher eval accuracy wins; equal accuracy is broken by a lower eval loss (accuracy on a few hundred pairs
    moves in coarse steps), by more than rounding."""
    if b is None:
        return True
    if a["accuracy"] != b["accuracy"]:
        return a["accuracy"] > b["accuracy"]
    return a["loss"] < b["loss"] - _LOSS_TIE_BREAK


class BestCheckpoint:
    """`--eval-every` / `--early-stopping`: measure the eval split every N optimiser steps (and at the end),
    keep a copy of the best weights in memory, and stop after `patience` evaluations without a better one.

    The measure is bonsynth's own (`evaluate_split`, the numbers `rm eval` prints), not the Trainer's eval
    loop, so the checkpoint kept is the one with the best accuracy as users will measure it. Only trainable
    tensors are copied: the whole model for a full fine-tune, the adapters and head for LoRA.
    """

    def __init__(self, evaluate: Any, every: int | str, patience: int = 0) -> None:
        self.evaluate, self.every, self.patience = evaluate, every, patience
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.best_state: dict[str, Any] | None = None
        self.stale = 0
        self.stopped_early = False

    def _measure(self, state: Any, model: Any) -> None:
        import torch

        if self.history and self.history[-1]["step"] == state.global_step:
            return
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = self.evaluate(model)
        if was_training:
            model.train()
        point = {"step": int(state.global_step), "epoch": round(float(state.epoch or 0.0), 4),
                 "accuracy": float(metrics["accuracy"]), "loss": float(metrics["loss"])}
        self.history.append(point)
        log.info("eval at step %d: accuracy %.4f, loss %.4f", point["step"], point["accuracy"], point["loss"])
        if _better(point, self.best):
            self.best, self.stale = point, 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.named_parameters()
                               if v.requires_grad}
        else:
            self.stale += 1

    def _maybe_stop(self, control: Any) -> None:
        if self.patience and self.stale >= self.patience:
            self.stopped_early = True
            control.should_training_stop = True

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> Any:
        if self.every != "epoch" and state.global_step % self.every == 0:
            self._measure(state, model)
            self._maybe_stop(control)
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> Any:
        if self.every == "epoch":
            self._measure(state, model)
            self._maybe_stop(control)
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> Any:
        self._measure(state, model)  # the last step counts too, if it fell between two evaluations
        return control

    def restore(self, model: Any) -> None:
        """Put the best weights back (a no-op when the last evaluation was the best)."""
        if self.best_state is None or (self.history and self.best is self.history[-1]):
            return
        params = dict(model.named_parameters())
        import torch

        with torch.no_grad():
            for name, value in self.best_state.items():
                params[name].copy_(value.to(params[name].device))

    @classmethod
    def callback(cls, *args: Any, **kwargs: Any) -> BestCheckpoint:
        """A `BestCheckpoint` that is also a transformers `TrainerCallback` (transformers is imported only here,
        so importing this module stays cheap for the CLI)."""
        from transformers import TrainerCallback

        return type("BestCheckpointCallback", (cls, TrainerCallback), {})(*args, **kwargs)

    def summary(self) -> dict[str, Any]:
        assert self.best is not None  # on_train_end always measures
        return {"best_step": self.best["step"], "best_epoch": self.best["epoch"], "stopped_early": self.stopped_early,
                "evaluations": self.history}


# ---------------------------------------------------------------------------------------------------- eval + save


def evaluate_split(scorer: Any, objective: str, records: list, batch_size: int | None = None) -> tuple[dict, list[float]]:
    """Metrics on held-out records, plus every reward scored (for the normalisation statistics)."""
    from bonsynth.rm import evaluate as ev

    if not records:
        return {}, []
    if objective == "pairwise":
        chosen, rejected = ev.score_pairs(scorer, records, batch_size)
        return ev.pairwise_metrics(chosen, rejected, [p.margin for p in records]), chosen + rejected
    if objective == "binary":
        rewards = ev.score_items(scorer, [ev.binary_item(r) for r in records], batch_size)
        return ev.binary_metrics(rewards, [r.label for r in records]), rewards
    per_group = ev.score_groups(scorer, records, batch_size)
    return ev.ranked_metrics(records, per_group), [r for g in per_group for r in g]


def reward_stats(rewards: list[float]) -> tuple[float, float]:
    """Mean and (population) std for z-normalising; std 1.0 when it cannot be measured."""
    if not rewards:
        return 0.0, 1.0
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    return float(mean), float(std) if std > 0 else 1.0


def save_reward_model(model: Any, tokenizer: Any, meta: RMMeta, out: str | Path) -> Path:
    """Weights (safetensors), tokenizer and bonsynth_rm.json; a plain HF model directory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    meta.save(out)
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _json_safe(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
