"""The loop recipe: a YAML file whose keys are exactly these pydantic models.

    out: runs/my-loop                 # the loop directory (rounds, datasets, checkpoints, reports)
    seed: 0                           # every round's seeds derive from it and the round index
    policy: PATH | HUB_ID | demo:policy
    rewards: [PATH, ...]              # the RM(s) that score and select (demo:rm for the demo RM)
    reward_weights: [0.7, 0.3]        # optional, one per RM
    prompts: [PATH, ...]              # one or more prompt sources (jsonl/json/parquet/datasets folder),
                                      # and/or `- synth: {seeds: FILE, per_round: K, ...}` (below)
    rounds: 3
    prompts_per_round: 64 | all       # a number: fresh prompts each round; all: every prompt every round
    device: auto                      # generation, scoring and training
    dtype: auto
    trust_remote_code: false          # run model code from the policy/RM directories (every load in the loop)
    allow_unsafe_weights: false       # also load pickle .bin/.pt weights (they can run code); default safetensors only
    generation: {n, temperature, top_p, max_new_tokens, stop, backend, long_prompts, reward_engine, batch_size,
                 gen_batch_size, tensor_parallel_size, gpu_memory_utilization, subprocess,
                 prefix_sharing, reward_dtype, max_model_len, enforce_eager, prune_at, prune_keep}
    selection: {select: best | top-k:K | pairs, min_reward, min_margin, dedup, length_normalize}
    update: {method: sft | dpo, epochs, lr, batch_size, grad_accum, max_length, beta, loss_type, lora: {...}}
    rm_update: {labeler: PATH, epochs, lr, ...}   # optional: fine-tune the RM on each round's relabelled pairs
    eval: {prompts, num_prompts, n, temperature, top_p, max_new_tokens, rewards, reward_weights,
           judge, judge_weights}
    control: random                   # optional: a control arm trained on random candidates (see below)

Synthetic prompts (optional): a `prompts` item `synth:` makes `per_round` fresh prompts every round with
`bonsynth prompts synth` (few-shot from `seeds`, filtered and deduplicated), by the round's current policy
(`model: policy`, the default) or by a fixed model (`model: PATH`). They join the round's file prompts (if
any). The eval prompts are never synthesised: they are held out from the file prompts, or given by
`eval.prompts` (required when every prompt is synthetic), and a synthetic prompt that copies one is dropped.

    prompts:
      - synth: {seeds: data/seeds.jsonl, per_round: 64, model: policy, shots: 3, max_similarity: 0.7,
                template: FILE, temperature: 1.0, top_p: 1.0, max_new_tokens: 128, min_words: 3,
                max_words: 256, language_check: true, max_requests: null}

The gold judge and the control arm (both optional; a recipe without them keeps its fingerprint):

    eval:
      judge: [PATH, ...]              # RM(s) that never select (same forms as `rewards`, demo: names too)
      judge_weights: [0.5, 0.5]       # optional, one per judge RM (z-normalised mix, as reward_weights)
    control: random

With `eval.judge`, every eval run (the baseline's and each round's) is re-scored by the judge with
`bonsynth judge` (`judge.json`, and per candidate `gold.jsonl`), and each round records its gold mean and its
gold win rate against the previous round and the base policy, with 95% bootstrap CIs over prompts (per
prompt: the chance a random eval candidate beats a random one of the other run, ties half). With
`control: random`, each round also trains a control policy, from the control arm's previous policy, on one
uniformly random candidate per prompt of the round's candidates (seeded by the recipe seed, the round and the
prompt id; for dpo a random ordered pair) instead of the best, and evaluates it the same way. The candidate
pool is the main arm's, so the arms differ only in the selection rule. The report puts both arms side by side
under the judge: did selection help, or would any fine-tuning on fresh samples have done the same?

Relative paths are relative to the working directory. `demo:policy` and `demo:rm` name the cached demo
models (built on first use, as `bonsynth quickstart` does); `demo:data/FILE` names a file of the sample data.

Unknown keys are errors (a typo would otherwise be ignored), and every error names the recipe file and the
key, on one line.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from bonsynth.data.synth import FilterSettings
from bonsynth.data.yaml_io import load_yaml, short_repr
from bonsynth.errors import BonsynthError, ConfigError
from bonsynth.generate.pipeline import GenerateConfig
from bonsynth.generate.synth import SynthConfig
from bonsynth.select.selection import parse_select
from bonsynth.settings import yaml_fields

UPDATE_METHODS = ("sft", "dpo")
# TRL's DPOConfig.loss_type values (trl 1.x).
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
LOOP_BACKENDS = ("auto", "hf", "vllm")
# A field's role in the loop's fingerprint is marked on the field: `NOT_FP` keys do not change what a loop writes
# (a resumed loop may change them; as in GenerateConfig, the loading options only decide whether a model may be
# loaded, and prefix sharing changes rewards only by rounding); `IF_SET` keys do, but are left out while unset,
# so loops started before they existed still resume.
NOT_FP: dict[str, Any] = {"json_schema_extra": {"fingerprint": False}}
IF_SET: dict[str, Any] = {"json_schema_extra": {"fingerprint": "if_set"}}
VLLM_ONLY = ("max_model_len", "enforce_eager")  # generation keys that only the vllm backend reads


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# The sections that set a command's config are built from that config's fields (`settings.yaml_fields`): the
# same names, types, defaults, bounds, choices and fingerprint marks as the flags and the library keywords, so
# nothing is declared twice. Only the loop's own keys are declared here.
SYNTH_KEYS = ("seeds", "template", "shots", "per_request", "temperature", "top_p", "max_new_tokens")
SYNTH_BATCH_KEYS = ("max_requests", "batch_size")
FILTER_KEYS = ("max_similarity", "ngram", "min_words", "max_words", "language_check")
GENERATION_KEYS = ("n", "temperature", "top_p", "max_new_tokens", "stop", "backend", "long_prompts", "reward_engine",
                   "batch_size", "prefix_sharing", "reward_dtype", "max_model_len", "enforce_eager", "prune_at",
                   "prune_keep")
SELECTION_KEYS = ("select", "min_reward", "min_margin", "dedup", "length_normalize")


def _section(name: str, base: type[BaseModel], doc: str, **fields: Any) -> type[BaseModel]:
    return create_model(name, __base__=base, __module__=__name__, __doc__=doc, **fields)


def _synth_fields() -> dict[str, Any]:
    own = yaml_fields(SynthConfig, SYNTH_KEYS)
    return {"seeds": own.pop("seeds"),
            "per_round": (int, Field(ge=1)),
            # `policy`: the round's current policy; else a fixed model (path, hub id, demo: name)
            "model": (str, Field("policy")),
            **own, **yaml_fields(FilterSettings, FILTER_KEYS), **yaml_fields(SynthConfig, SYNTH_BATCH_KEYS)}


SynthSection = _section("SynthSection", _Section, "`prompts: - synth: {...}`: fresh synthetic prompts every round "
                        "(`bonsynth prompts synth`); the keys are `SynthConfig`'s and its filters'.", **_synth_fields())


class PromptSynthItem(_Section):
    synth: SynthSection  # type: ignore[valid-type]


class _GenerationChecks(_Section):
    """What the loop adds to `GenerateConfig`'s own checks of these keys."""

    @field_validator("backend", check_fields=False)
    @classmethod
    def _backend(cls, v: str) -> str:
        if v not in LOOP_BACKENDS:
            extra = " (the policy changes every round, so a served model cannot be used)" if v == "openai" else ""
            raise ValueError(f"unknown backend {short_repr(v)}; expected one of {', '.join(LOOP_BACKENDS)}{extra}")
        return v

    @field_validator("prefix_sharing", mode="before", check_fields=False)
    @classmethod
    def _prefix_sharing(cls, v: Any) -> Any:
        """YAML reads a bare `on`/`off` as a boolean; take it as the mode the user wrote."""
        return ("on" if v else "off") if isinstance(v, bool) else v

    @field_validator("reward_dtype", check_fields=False)
    @classmethod
    def _reward_dtype(cls, v: str | None) -> str | None:
        from bonsynth.models import dtype_name

        if v is not None:
            try:
                dtype_name(v)
            except BonsynthError:
                raise ValueError(f"unknown dtype {short_repr(v)}; expected auto, float32, bfloat16 or float16") from None
        return v

    @model_validator(mode="after")
    def _prune(self) -> Any:
        """The schedule is checked as `generate` checks it (the messages name the fields, this section's keys)."""
        from bonsynth.generate.prune import PruneConfig

        try:
            PruneConfig.resolve(self.prune_at, self.prune_keep, self.max_new_tokens)
        except ConfigError as e:
            raise ValueError(str(e)) from None  # a FieldError: it names the fields, the recipe's keys
        return self

    @model_validator(mode="after")
    def _vllm_only(self) -> Any:
        given = [k for k in VLLM_ONLY if getattr(self, k)]
        if given and self.backend == "hf":
            raise ValueError(f"{' and '.join(given)} only apply to the vllm backend (backend is hf)")
        return self

    def generate_settings(self) -> dict[str, Any]:
        """This section's `GenerateConfig` fields, as keywords for it (copies: the config owns its lists)."""
        return self.model_dump(include=set(GENERATION_KEYS))


def _generation_fields() -> dict[str, Any]:
    own = yaml_fields(GenerateConfig, GENERATION_KEYS)
    own["backend"] = (str, own["backend"][1])  # the loop takes fewer backends than generate (checked above)
    head = {k: own.pop(k) for k in GENERATION_KEYS[:GENERATION_KEYS.index("batch_size") + 1]}
    return {**head,
            # backend knobs (`generate`'s backend flags): how generation runs, not what it writes
            "gen_batch_size": (int | None, Field(None, ge=1, **NOT_FP)),  # hf: prompts per generate() call
            "tensor_parallel_size": (int | None, Field(None, ge=1)),  # vllm
            "gpu_memory_utilization": (float | None, Field(None, gt=0, le=1, **NOT_FP)),  # vllm
            "subprocess": (bool | None, Field(None, **NOT_FP)),  # generation in a child process; default: vllm only
            **own}


GenerationSection = _section(
    "GenerationSection", _GenerationChecks,
    "Sampling for each round's best-of-N (and, unless `eval` overrides it, for the eval samples): `GenerateConfig`'s "
    "fields of the same names, plus the backend knobs. `prune_at`/`prune_keep` apply to each round's best-of-N, never "
    "to eval.", **_generation_fields())


class _SelectionChecks(_Section):
    @field_validator("select", check_fields=False)
    @classmethod
    def _select(cls, v: str) -> str:
        try:
            parse_select(v)
        except ConfigError:
            raise ValueError(f"unknown selection {short_repr(v)}; expected best, pairs or top-k:K (K >= 1)") from None
        return v


SelectionSection = _section("SelectionSection", _SelectionChecks,
                            "How each round selects: `GenerateConfig`'s selection fields (`write_pairs` follows "
                            "`update.method`).", **yaml_fields(GenerateConfig, SELECTION_KEYS))


class LoraSection(_Section):
    r: int = Field(16, ge=1)
    alpha: int | None = Field(None, ge=1)  # default 2 * r
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str | None = None  # default: peft's choice for the architecture


class UpdateSection(_Section):
    """The policy update of each round: `sft` (RAFT / ReST on the best-of-N) or `dpo` (iterative DPO)."""

    method: str
    epochs: float = Field(1.0, gt=0)
    lr: float | None = Field(None, gt=0)  # default: 2e-5 for sft, 1e-6 for dpo (TRL's defaults)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=8)
    lr_scheduler: str = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    gradient_checkpointing: bool = False
    beta: float = Field(0.1, gt=0)  # dpo only
    loss_type: str = "sigmoid"  # dpo only
    lora: LoraSection | None = None

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in UPDATE_METHODS:
            raise ValueError(f"unknown update step {short_repr(v)}; expected one of {', '.join(UPDATE_METHODS)}")
        return v

    @field_validator("loss_type")
    @classmethod
    def _loss_type(cls, v: str) -> str:
        if v not in DPO_LOSS_TYPES:
            raise ValueError(f"unknown DPO loss {short_repr(v)}; expected one of {', '.join(DPO_LOSS_TYPES)}")
        return v

    @model_validator(mode="after")
    def _dpo_only(self) -> UpdateSection:
        if self.method == "sft":
            for key, default in (("beta", 0.1), ("loss_type", "sigmoid")):
                if key in self.model_fields_set and getattr(self, key) != default:
                    raise ValueError(f"'{key}' is a dpo setting; it has no meaning for method sft")
        return self

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-5 if self.method == "sft" else 1e-6)


class RMUpdateSection(_Section):
    """Fine-tune the RM each round on the round's pairs, ordered by a separate labelling RM."""

    labeler: str
    epochs: float = Field(1.0, gt=0)
    lr: float = Field(1e-5, gt=0)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(512, ge=8)
    eval_split: float = Field(0.1, ge=0, lt=1)
    lora_r: int = Field(0, ge=0)


class EvalSection(_Section):
    """The fixed eval set every round is measured on, and how it is sampled."""

    prompts: list[str] | None = None  # default: held out from `prompts` (never trained on)
    num_prompts: int | None = Field(32, ge=1)  # None with `prompts`: all of them
    n: int = Field(4, ge=1)
    temperature: float | None = Field(None, ge=0)  # None: as in `generation`
    top_p: float | None = Field(None, gt=0, le=1)
    max_new_tokens: int | None = Field(None, ge=1)
    rewards: list[str] | None = None  # default: the recipe's `rewards` (the initial RMs, a fixed yardstick)
    reward_weights: list[float] | None = None
    judge: list[str] | None = Field(None, **IF_SET)  # gold judge RM(s): never select, only measure
    judge_weights: list[float] | None = Field(None, **IF_SET)

    @field_validator("prompts", "rewards", "judge", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class LoopRecipe(_Section):
    out: str = Field(**NOT_FP)
    seed: int = 0
    policy: str
    rewards: list[str]
    reward_weights: list[float] | None = None
    prompts: list[str | PromptSynthItem]
    prompt_format: Literal["auto", "prompts"] = "auto"
    rounds: int = Field(ge=1, **NOT_FP)  # a resumed loop may run more rounds
    prompts_per_round: int | Literal["all"] = "all"
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = Field(False, **NOT_FP)  # every policy/RM load of the loop may run model code from its directory
    allow_unsafe_weights: bool = Field(False, **NOT_FP)  # every policy/RM load may read pickle weights (default: safetensors only)
    generation: GenerationSection = Field(default_factory=GenerationSection)  # type: ignore[valid-type]
    selection: SelectionSection = Field(default_factory=SelectionSection)  # type: ignore[valid-type]
    update: UpdateSection
    rm_update: RMUpdateSection | None = None
    eval: EvalSection = Field(default_factory=EvalSection)
    control: Literal["random"] | None = Field(None, **IF_SET)  # a control arm trained on random candidates
    name: str | None = None
    description: str | None = None

    @field_validator("rewards", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompt_items(cls, v: Any) -> Any:
        """Paths, and at most one `synth:` mapping, checked here so a mistake names its key in the item."""
        v = [v] if isinstance(v, (str, dict)) else v
        if not isinstance(v, list):
            return v
        items = []
        for i, item in enumerate(v):
            if isinstance(item, dict):
                try:
                    item = PromptSynthItem.model_validate(item)
                except ValidationError as e:
                    raise ValueError(f"item {i}: {describe_validation_error(e, PromptSynthItem)}") from None
            items.append(item)
        return items

    @field_validator("prompts_per_round", mode="before")
    @classmethod
    def _ppr(cls, v: Any) -> Any:
        if isinstance(v, bool) or (not isinstance(v, int) and v != "all"):
            raise ValueError(f"expected a positive number or 'all', got {short_repr(v)}")
        if isinstance(v, int) and v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> LoopRecipe:
        if not self.rewards:
            raise ValueError("'rewards' is empty; name at least one reward model")
        if not self.prompts:
            raise ValueError("'prompts' is empty; name at least one prompt source")
        if sum(isinstance(p, PromptSynthItem) for p in self.prompts) > 1:
            raise ValueError("'prompts' has more than one 'synth' item; one synthesiser per recipe")
        if not self.prompt_files and not self.eval.prompts:
            raise ValueError("'eval.prompts' is needed when every prompt is synthetic: the eval prompts are a "
                             "fixed held-out set, never synthesised")
        if self.reward_weights is not None and len(self.rewards) == 1:
            raise ValueError("'reward_weights' needs two or more 'rewards' (one RM's reward is used as it is)")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"'reward_weights' has {len(self.reward_weights)} values for {len(self.rewards)} rewards")
        ev = self.eval
        if ev.reward_weights is not None and len(ev.rewards or self.rewards) == 1:
            raise ValueError("'eval.reward_weights' needs two or more eval reward models")
        if ev.reward_weights is not None and len(ev.reward_weights) != len(ev.rewards or self.rewards):
            raise ValueError("'eval.reward_weights' needs one value per eval reward model")
        if ev.judge is not None and not ev.judge:
            raise ValueError("'eval.judge' is empty; name at least one judge reward model or drop the key")
        if ev.judge_weights is not None and len(ev.judge or []) < 2:
            raise ValueError("'eval.judge_weights' needs two or more 'eval.judge' models")
        if ev.judge_weights is not None and len(ev.judge_weights) != len(ev.judge or []):
            raise ValueError(f"'eval.judge_weights' has {len(ev.judge_weights)} values for {len(ev.judge or [])} "
                             "judge models")
        if ev.judge_weights is not None and not all(math.isfinite(w) for w in ev.judge_weights):
            raise ValueError("'eval.judge_weights' must be finite numbers")
        if self.rm_update is not None and len(self.rewards) != 1:
            raise ValueError("'rm_update' fine-tunes one reward model; 'rewards' must name exactly one")
        return self

    @property
    def prompt_files(self) -> list[str]:
        """The prompt sources that are files (the `synth` item, if any, left out)."""
        return [p for p in self.prompts if isinstance(p, str)]

    @property
    def prompt_synth(self) -> SynthSection | None:  # type: ignore[valid-type]
        return next((p.synth for p in self.prompts if isinstance(p, PromptSynthItem)), None)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(fingerprint_view(self), sort_keys=True).encode()).hexdigest()[:16]


def fingerprint_view(recipe: LoopRecipe) -> dict:
    """The recipe settings that decide what a loop writes (so a resume may change only the others)."""
    d = _drop_marked(recipe, recipe.model_dump(mode="json"))
    if d["generation"].get("reward_dtype") == recipe.dtype:
        d["generation"].pop("reward_dtype")  # spelled out or defaulted, the RMs run in the same dtype
    return d


def _drop_marked(model: BaseModel, dumped: dict) -> dict:
    """`dumped` without the fields marked NOT_FP, or IF_SET while None, in `model` and its sections."""
    for name, info in type(model).model_fields.items():
        mark = (info.json_schema_extra or {}).get("fingerprint", True) if isinstance(info.json_schema_extra, dict) else True
        value = getattr(model, name)
        if mark is False or (mark == "if_set" and value is None):
            dumped.pop(name, None)
        elif isinstance(value, BaseModel):
            _drop_marked(value, dumped[name])
    return dumped


# ------------------------------------------------------------------------------------------------ loading


def load_recipe(path: str | Path) -> LoopRecipe:
    """Read and validate a recipe; every problem is a one-line `ConfigError` naming the file and the key."""
    data, _ = load_yaml(path, "recipe")
    if data is None:
        raise ConfigError(f"{path}: the recipe is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of recipe keys at the top level, got a {type(data).__name__}")
    return parse_recipe(data, source=str(path))


def parse_recipe(data: dict, source: str = "recipe") -> LoopRecipe:
    try:
        return LoopRecipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {describe_validation_error(e, LoopRecipe)}") from None


def describe_validation_error(e: ValidationError, model: type[BaseModel]) -> str:
    """The first error as `key.path: what is wrong`, with a 'did you mean' for misspelt keys."""
    errors = e.errors(include_url=False)
    first = errors[0]
    loc = [str(x) for x in first["loc"]]
    key = ".".join(loc) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        allowed = _fields_at(model, first["loc"][:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(allowed)})"
        msg = f"unknown key '{key}'{hint}"
    elif kind == "missing":
        msg = f"missing required key '{key}'"
    else:
        text = first["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            text = text.removeprefix(prefix)
        msg = f"{key}: {text}" if loc else text
        if kind not in ("value_error", "assertion_error") and "input" in first and not isinstance(first["input"], dict):
            msg += f" (got {short_repr(first['input'])})"
    more = len(errors) - 1
    return msg + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys a nested section accepts, found by walking the recipe models along an error location."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
