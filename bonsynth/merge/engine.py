"""The merge engine: plan every output tensor from headers (all user errors surface here, before writing), then
stream: read one tensor per input, merge, append to the shard being filled.

The plan follows mergekit: a `models:` config becomes one slice covering every layer of every model (the base is
added as an input if it is not listed); embeddings come from the first slice's sources, final norms and heads from
the last slice's, and each layer of a slice of n layers sees t = i / (n - 1) for gradients (t = 0 elsewhere).

The output is written to a temporary directory beside OUT and renamed at the end, so a failed merge leaves
nothing behind. Never a silent drop: a tensor missing from some input, or with another shape, is an error that
names it (the only exceptions, documented in `bonsynth.merge.heads`, are listed in the summary).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import random
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from bonsynth.data.yaml_io import parse_yaml
from bonsynth.errors import BonsynthError, ConfigError, InternalError
from bonsynth.merge import heads as H
from bonsynth.merge.config import _NO_VALUE, MergeConfig, load_config, normalize_dtype, resolve
from bonsynth.merge.io import ModelSource, ShardWriter, copy_tokenizer, parse_size, resolve_model_dir
from bonsynth.merge.methods import REQUIRED, Entry, MergeMethod, TensorGroup, get_method, weighted_average
from bonsynth.models import has_tokenizer_files
from bonsynth.outdir import build_dir_atomic, check_output_dir
from bonsynth.rm.calibrate import calibrate_reward_model, check_calibration_data

LOG = logging.getLogger("bonsynth.merge")
CONFIG_COPY = "bonsynth_merge.yml"


@dataclass
class _Source:
    """One input of one output slice."""

    ref: str
    start: int
    end: int
    params: dict[str, Any] | None


@dataclass
class _Slice:
    sources: list[_Source]
    base: str | None
    params: dict[str, Any] | None
    where: str


@dataclass
class _Input:
    ref: str
    name: str  # tensor name inside that model
    labels: int = 0  # 1 or 2: a classifier's label tensor (converted to a scalar head); 0: not a label tensor
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Planned:
    out_name: str
    mode: str  # "method" | "average" (the base lacks it) | "buffer" (integer tensor: must agree)
    base: _Input | None
    others: list[_Input]
    shared: dict[str, Any]
    shape: tuple[int, ...]


class _Planner:
    def __init__(self, cfg: MergeConfig, method: MergeMethod, sources: dict[str, ModelSource]) -> None:
        self.cfg = cfg
        self.method = method
        self.src = sources
        self.layout = {ref: H.analyze(s) for ref, s in sources.items()}
        self.plan: list[_Planned] = []
        self.left_out: list[str] = []
        self.averaged: list[str] = []
        self.converted: list[str] = []
        self.slices = self._slices()
        refs = [s.ref for sl in self.slices for s in sl.sources]
        self.classifiers = [r for r in dict.fromkeys(refs) if H.is_classifier(sources[r].config)]
        self.is_rm = bool(self.classifiers)
        self.template = cfg.base_model or self.slices[0].sources[0].ref
        self.labels = {r: H.label_tensors(sources[r], self.layout[r]) for r in self.classifiers}
        if self.is_rm:
            archs = {H.architecture(sources[r].config) for r in self.classifiers}
            if len(archs) > 1:
                raise ConfigError(f"the classifiers to merge have different architectures: {', '.join(sorted(archs))}")
            self.out_arch = archs.pop()
            out_layout = self.layout[self.classifiers[0]]
        else:
            self.out_arch = H.architecture(sources[self.template].config)
            out_layout = self.layout[self.template]
        self.out_prefix = out_layout.prefix if (out_layout.prefixed or self.is_rm) else ""
        self.out_container = out_layout.container or next(
            (lay.container for lay in self.layout.values() if lay.container), None)
        self.layer_map: list[tuple[str, int]] = []  # output layer -> (model, its layer index)

    # ------------------------------------------------------------------------------------------ structure

    def _slices(self) -> list[_Slice]:
        cfg, method = self.cfg, self.method
        out: list[_Slice] = []
        if cfg.models:
            srcs = [_Source(m.model, 0, self.layout[m.model].num_layers, m.parameters) for m in cfg.models]
            if cfg.base_model and cfg.base_model not in [m.model for m in cfg.models]:
                srcs.append(_Source(cfg.base_model, 0, self.layout[cfg.base_model].num_layers, None))
            counts = {s.ref: s.end for s in srcs}
            if len(set(counts.values())) > 1:
                detail = ", ".join(f"'{r}' has {n}" for r, n in counts.items())
                raise ConfigError(f"the models have different numbers of layers ({detail}); use slices to pick ranges")
            out.append(_Slice(srcs, cfg.base_model, None, "models"))
        else:
            for i, sl in enumerate(cfg.slices or ()):
                srcs = []
                for j, s in enumerate(sl.sources):
                    n = self.layout[s.model].num_layers
                    start, end = s.layer_range
                    if end > n:
                        raise ConfigError(
                            f"slices[{i}].sources[{j}]: layer_range [{start}, {end}] is out of bounds for "
                            f"'{s.model}', which has {n} layers (valid: 0 <= START < END <= {n})"
                        )
                    srcs.append(_Source(s.model, start, end, s.parameters))
                lengths = {s.end - s.start for s in srcs}
                if len(lengths) > 1:
                    raise ConfigError(f"slices[{i}]: all sources of a slice must have the same number of layers")
                out.append(_Slice(srcs, sl.base_model or cfg.base_model, sl.parameters, f"slices[{i}]"))
        for sl in out:
            base = sl.base if method.base_required else None
            method.check_inputs([s.ref for s in sl.sources], base, sl.where)
        return out

    def out_name(self, canonical: str) -> str:
        return f"{self.out_prefix}.{canonical}" if self.out_prefix else canonical

    # ----------------------------------------------------------------------------------------------- plan

    def build(self) -> None:
        first, last = self.slices[0], self.slices[-1]
        pre = self._union(first, lambda lay: [c for c in lay.other if H.is_pre(c)])
        for canon in pre:
            self._group(self.out_name(canon), first, 0.0, {s.ref: self.layout[s.ref].other.get(canon) for s in first.sources})
        out_idx = 0
        for sl in self.slices:
            length = sl.sources[0].end - sl.sources[0].start
            for i in range(length):
                t = i / (length - 1) if length > 1 else 1.0
                rests = list(dict.fromkeys(
                    r for s in sl.sources for r in self.layout[s.ref].layers.get(s.start + i, {})))
                for rest in rests:
                    names = {s.ref: self.layout[s.ref].layers.get(s.start + i, {}).get(rest) for s in sl.sources}
                    self._group(self.out_name(f"{self.out_container}.{out_idx}.{rest}"), sl, t, names)
                self.layer_map.append((sl.sources[0].ref, sl.sources[0].start + i))
                out_idx += 1
        post = self._union(last, lambda lay: [c for c in lay.other if not H.is_pre(c)])
        for canon in post:
            self._group(self.out_name(canon), last, 0.0, {s.ref: self.layout[s.ref].other.get(canon) for s in last.sources})
        self._heads(last)

    def _union(self, sl: _Slice, pick) -> list[str]:
        return list(dict.fromkeys(n for s in sl.sources for n in pick(self.layout[s.ref])))

    def _heads(self, sl: _Slice) -> None:
        if not self.is_rm:
            for name in self._union(sl, lambda lay: list(lay.head)):
                self._group(name, sl, 0.0, {s.ref: self.layout[s.ref].head.get(name) for s in sl.sources})
            return
        for s in sl.sources:
            if s.ref not in self.labels:
                for name in self.layout[s.ref].head:
                    self.left_out.append(f"{s.ref}: {name}")
        cls_heads = list(dict.fromkeys(h for s in sl.sources if s.ref in self.labels for h in self.layout[s.ref].head))
        for name in cls_heads:
            names = {s.ref: (self.layout[s.ref].head.get(name) if s.ref in self.labels else None) for s in sl.sources}
            self._group(name, sl, 0.0, names, head=True)

    def _group(self, out_name: str, sl: _Slice, t: float, names: dict[str, str | None], head: bool = False) -> None:
        method = self.method
        base_ref = sl.base if method.base_required else None
        missing = [r for r, n in names.items() if n is None]
        present = [r for r, n in names.items() if n is not None]
        mode = "method"
        if missing:
            if base_ref is not None and missing == [base_ref]:
                mode = "average"
                self.averaged.append(out_name)
            elif head:
                raise ConfigError(
                    f"cannot merge reward head '{out_name}': model(s) {', '.join(repr(m) for m in missing)} have no "
                    f"such head (it is in {', '.join(repr(p) for p in present)}); every model merged into a reward "
                    "model must be a sequence classifier, except a base, whose missing head is averaged from the others"
                )
            else:
                raise ConfigError(
                    f"tensor '{out_name}' is missing from model(s) {', '.join(repr(m) for m in missing)} "
                    f"(present in {', '.join(repr(p) for p in present)}); cannot merge it"
                )
        inputs: dict[str, _Input] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: set[str] = set()
        for ref in present:
            name = names[ref]
            assert name is not None
            info = self.src[ref].tensors[name]
            labels = self.labels.get(ref, {}).get(name, 0) if head else 0
            if labels == 2:
                self.converted.append(f"{ref}: {name}")
            inputs[ref] = _Input(ref, name, labels)
            shapes[ref] = H.scalar_shape(info.shape, labels) if labels else info.shape
            dtypes.add(info.dtype)
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"'{r}' {list(s)}" for r, s in shapes.items())
            raise ConfigError(f"shape mismatch for tensor '{out_name}': {detail}")
        is_int = {not _is_float(d) for d in dtypes}
        if is_int == {True} or (len(is_int) > 1):
            if len(is_int) > 1:
                raise ConfigError(f"tensor '{out_name}' is floating point in some models and integer in others")
            mode = "buffer"
        shared = {}
        for spec in method.parameters:
            if spec.scope == "shared":
                shared[spec.name] = self._value(spec, [sl.params, self.cfg.parameters], out_name, t, None)
        for ref, inp in inputs.items():
            src_params = next((s.params for s in sl.sources if s.ref == ref), None)
            for spec in method.parameters:
                if spec.scope == "input" or (spec.scope == "non_base" and ref != base_ref):
                    inp.params[spec.name] = self._value(spec, [src_params, sl.params, self.cfg.parameters], inp.name, t, ref)
        base = inputs.get(base_ref) if base_ref is not None else None
        others = [inp for r, inp in inputs.items() if r != base_ref]
        self.plan.append(_Planned(out_name, mode, base, others, shared, next(iter(shapes.values()))))

    def _value(self, spec, scopes, tensor: str, t: float, ref: str | None) -> Any:
        value = resolve(spec.name, scopes, tensor, t)
        if value is _NO_VALUE:
            if spec.default is REQUIRED:
                who = f"model '{ref}'" if ref else "the config"
                extra = ""
                if ref is not None and ref == self.cfg.base_model and spec.name == "weight":
                    extra = f" ({self.method.name} treats base_model as an ordinary input: give it a weight or drop base_model)"
                raise ConfigError(
                    f"{who} has no '{spec.name}' parameter, which merge_method {self.method.name} needs "
                    f"(for tensor '{tensor}'){extra}"
                )
            return spec.default
        if spec.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"'{spec.name}' must be true or false, got {value!r}")
            return value
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"'{spec.name}' must be a number, got {value!r}")
        if spec.name == "density" and not 0 < value <= 1:
            raise ConfigError(f"density {value} for model '{ref}' (tensor '{tensor}') is outside (0, 1]")
        return float(value)


def _is_float(dtype: str) -> bool:
    return any(k in dtype.lower() for k in ("float", "f16", "f32", "f64", "bf16", "f8"))


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


def _stored_dtype(name: str) -> torch.dtype:
    return _ST_DTYPES.get(name) or getattr(torch, name.removeprefix("torch."), torch.float32)


class _Executor:
    def __init__(self, sources: dict[str, ModelSource], method: MergeMethod, *, device: str, dtype: str | None,
                 out_dtype: str | None, seed: int) -> None:
        self.src = sources
        self.method = method
        self.device = torch.device(device)
        self.dtype = _TORCH_DTYPES[dtype] if dtype else None
        self.out_dtype = _TORCH_DTYPES[out_dtype] if out_dtype else None
        self.seed = seed

    def run(self, p: _Planned) -> torch.Tensor:
        inputs = ([p.base] if p.base else []) + p.others
        if p.mode == "buffer":
            first = self.src[inputs[0].ref].get(inputs[0].name)
            for inp in inputs[1:]:
                if not torch.equal(first, self.src[inp.ref].get(inp.name)):
                    raise BonsynthError(f"integer tensor '{p.out_name}' differs between '{inputs[0].ref}' and '{inp.ref}'")
            return first.clone()
        compute = self.dtype
        if compute is None:
            compute = _stored_dtype(self.src[inputs[0].ref].tensors[inputs[0].name].dtype)
            for inp in inputs[1:]:
                compute = torch.promote_types(compute, _stored_dtype(self.src[inp.ref].tensors[inp.name].dtype))
        arith = torch.float32 if compute in (torch.float16, torch.bfloat16) else compute

        def entry(inp: _Input) -> Entry:
            def load() -> torch.Tensor:
                raw = self.src[inp.ref].get(inp.name)
                x = raw.to(dtype=compute).to(dtype=arith, device=self.device)
                if x.data_ptr() == raw.data_ptr():
                    x = x.clone()  # the raw tensor may be the mmap itself: methods work in place
                return H.to_scalar_head(x, inp.labels, inp.name) if inp.labels else x

            return Entry(inp.ref, load, inp.params)

        if p.mode == "average":
            ws = [float(inp.params.get("weight", 1.0)) for inp in p.others]
            result = weighted_average(p.out_name, [entry(i) for i in p.others], ws)
        else:
            group = TensorGroup(p.out_name, entry(p.base) if p.base else None, [entry(i) for i in p.others],
                                p.shared, self.seed)
            result = self.method.merge(group)
        if tuple(result.shape) != p.shape:
            raise InternalError(f"merged '{p.out_name}' has shape {tuple(result.shape)}, expected {p.shape}")
        return result.to(dtype=self.out_dtype or compute)


def _out_config(pl: _Planner, cfg: MergeConfig, dtype_name: str | None) -> dict[str, Any]:
    """The template's config.json, patched: layer count, per-layer lists, dtype, and the reward-model head."""
    src = pl.src[pl.template]
    out = copy.deepcopy(src.config)
    lc = H.layer_count(out)
    if lc is not None:
        key, n = lc
        new_n = len(pl.layer_map)
        identity = new_n == n and all(r == pl.template and i == j for j, (r, i) in enumerate(pl.layer_map))
        if not identity:
            for k, v in list(out.items()):
                if k != "architectures" and isinstance(v, list) and len(v) == n and n > 0:
                    vals = []
                    for ref, i in pl.layer_map:
                        other = pl.src[ref].config.get(k)
                        n_other = H.layer_count(pl.src[ref].config)
                        ok = isinstance(other, list) and n_other is not None and len(other) == n_other[1]
                        vals.append(other[i] if ok else v[i])
                    out[k] = vals
            out[key] = new_n
    if dtype_name:
        out["dtype"] = dtype_name
        if "torch_dtype" in out:
            out["torch_dtype"] = dtype_name
    if pl.is_rm:
        cls_cfg = pl.src[pl.classifiers[0]].config
        for k, v in cls_cfg.items():
            out.setdefault(k, v)
        out["architectures"] = [pl.out_arch]
        out["id2label"] = {"0": "LABEL_0"}
        out["label2id"] = {"LABEL_0": 0}
        out.pop("num_labels", None)
        out["problem_type"] = None
        if out.get("pad_token_id") is None:
            out["pad_token_id"] = cls_cfg.get("pad_token_id")
    return out


def _rm_meta(pl: _Planner, cfg: MergeConfig, config_text: str | None):
    from bonsynth.rm.meta import UNMEASURED, RMMeta

    sources = []
    weights = {m.model: (m.parameters or {}).get("weight") for m in cfg.models or ()}
    max_lengths = []
    hashes: dict[str, str] = {}
    for ref in cfg.referenced_models():
        if ref not in pl.src:
            continue
        scfg = pl.src[ref].config
        meta = RMMeta.load(pl.src[ref].path)
        entry: dict[str, Any] = {
            "model": ref,
            "role": "base" if ref == cfg.base_model else "input",
            "architecture": H.architecture(scfg),
        }
        if ref in pl.labels:
            n = H.num_labels(scfg)
            entry["num_labels"] = n
            entry["head"] = "2-label classifier converted to logit1 - logit0" if n == 2 else "1-label reward head"
        else:
            entry["head"] = "none (language model)"
        w = weights.get(ref)
        if isinstance(w, int | float) and not isinstance(w, bool):
            entry["weight"] = w
        if meta is not None:
            entry["objective"] = meta.objective
            if meta.max_length:
                max_lengths.append(meta.max_length)
            hashes.update(meta.data_hashes)
        sources.append(entry)
    return RMMeta(
        objective="merged",
        num_labels=1,
        label_mapping={"0": "reward"},
        data_hashes=hashes,
        base_model=cfg.base_model,
        max_length=min(max_lengths) if max_lengths else None,
        reward_stats_source=UNMEASURED,  # mean 0 / std 1 are placeholders until `rm calibrate` measures them
        extra={
            "merge_method": cfg.merge_method,
            "sources": sources,
            "heads_averaged_without_base": [n for n in pl.averaged],
            "left_out": pl.left_out,
            "config": parse_yaml(config_text) if config_text else cfg.model_dump(exclude_none=True),
        },
    )


def _unsafe_weights_opt_in(allow_unsafe_weights: bool, allow_pickle: bool | None) -> bool:
    """The pickle opt-in under its one name (`allow_unsafe_weights`, as everywhere else); `allow_pickle` is the
    deprecated name merge had, still accepted."""
    if allow_pickle is None:
        return bool(allow_unsafe_weights)
    warnings.warn("allow_pickle is deprecated; use allow_unsafe_weights", DeprecationWarning, stacklevel=4)
    return bool(allow_unsafe_weights or allow_pickle)


@dataclass(frozen=True)
class MergeOptions:
    """How a merge runs (the config says what is merged). One object for `run_merge`, `merge_config` and
    `rm slice`, so an option is declared, defaulted and checked in one place.

    Merging executes no model code: configs are read as JSON and tokenizers copied as files, so there is no
    `trust_remote_code`.
    """

    device: str = "cpu"
    random_seed: int | None = None  # DARE's random drop; None: drawn and reported in the summary
    out_shard_size: str | int = "5B"
    dtype: str | None = None  # the arithmetic's dtype; None: the config's
    allow_unsafe_weights: bool = False  # also read pickle weights (torch.load, weights_only)
    overwrite: bool = False  # replace a non-empty OUT once the new one is complete
    calibrate_data: str | Path | None = None  # responses the merged RM scores for its reward mean/std
    require_tokenizer: bool = False  # refuse an output without tokenizer files (`rm slice`)

    @classmethod
    def of(cls, options: MergeOptions | None = None, *, allow_pickle: bool | None = None, **fields: Any) -> MergeOptions:
        """`options` with `fields` replaced (a TypeError names an unknown one); `allow_pickle` is the deprecated
        name of `allow_unsafe_weights`."""
        opts = dataclasses.replace(options or cls(), **fields)
        if allow_pickle is not None:
            opts = dataclasses.replace(
                opts, allow_unsafe_weights=_unsafe_weights_opt_in(opts.allow_unsafe_weights, allow_pickle))
        return opts


@dataclass(frozen=True)
class _RunSettings:
    """The options turned into what the engine uses, all checked before any tensor is read."""

    max_bytes: int
    work_dtype: str | None
    seed: int


def _check_options(opts: MergeOptions, cfg: MergeConfig) -> _RunSettings:
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but CUDA is not available")
    if opts.device != "cpu" and not opts.device.startswith("cuda"):
        raise ConfigError(f"unknown device '{opts.device}' (cpu or cuda)")
    max_bytes = parse_size(opts.out_shard_size)
    work_dtype = normalize_dtype(opts.dtype) if opts.dtype else cfg.dtype
    seed = opts.random_seed if opts.random_seed is not None else random.SystemRandom().randrange(2**31)
    return _RunSettings(max_bytes=max_bytes, work_dtype=work_dtype, seed=seed)


def _tokenizer_dir(cfg: MergeConfig, pl: _Planner, sources: dict[str, ModelSource], opts: MergeOptions,
                   notes: list[str]) -> Path:
    """Where the output's tokenizer comes from: `tokenizer_source` (a model of the merge or any other), else the
    base (or the template). A named source without tokenizer files is an error; the default one is a note."""
    tok_ref = cfg.tokenizer_source
    if tok_ref in (None, "base"):
        tok_dir = sources[cfg.base_model or pl.template].path
    elif tok_ref in sources:
        tok_dir = sources[tok_ref].path
    else:
        tok_dir = resolve_model_dir(tok_ref, allow_pickle=opts.allow_unsafe_weights)
    if not has_tokenizer_files(tok_dir):
        msg = f"no tokenizer files in {tok_dir}"
        if tok_ref not in (None, "base") or opts.require_tokenizer:
            raise ConfigError(msg)
        notes.append(msg + ": the output has no tokenizer")
    return tok_dir


@dataclass
class _Written:
    """What the write step produced, for the summary."""

    num_parameters: int
    num_shards: int
    config: dict[str, Any]
    tokenizer_files: list[str]
    calibration: dict[str, Any] | None = None


def _write_output(tmp: Path, out: Path, cfg: MergeConfig, pl: _Planner, sources: dict[str, ModelSource],
                  run: _RunSettings, opts: MergeOptions, tok_dir: Path, config_text: str | None) -> _Written:
    """Stream the planned tensors into `tmp` and add config, tokenizer, the config copy and (for an RM) its meta."""
    writer = ShardWriter(tmp, run.max_bytes)
    ex = _Executor(sources, pl.method, device=opts.device, dtype=run.work_dtype, out_dtype=cfg.out_dtype, seed=run.seed)
    with torch.no_grad():
        for p in pl.plan:
            writer.add(p.out_name, ex.run(p))
    num_shards = writer.finish()
    out_cfg = _out_config(pl, cfg, cfg.out_dtype or run.work_dtype)
    (tmp / "config.json").write_text(json.dumps(out_cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tok_files = copy_tokenizer(tok_dir, tmp)
    gen = sources[pl.template].path / "generation_config.json"
    if not pl.is_rm and gen.is_file():
        shutil.copy2(gen, tmp / gen.name)
    (tmp / CONFIG_COPY).write_text(
        config_text or yaml.safe_dump(cfg.model_dump(exclude_none=True), sort_keys=False), encoding="utf-8")
    written = _Written(writer.num_parameters, num_shards, out_cfg, tok_files)
    if pl.is_rm:
        _rm_meta(pl, cfg, config_text).save(tmp)
        if opts.calibrate_data is not None:
            for s in sources.values():
                s.close()  # the inputs are done with: free their maps before loading the output
            written.calibration = calibrate_reward_model(tmp, opts.calibrate_data, device=opts.device, label=out)
    return written


def _summary(out: Path, cfg: MergeConfig, pl: _Planner, run: _RunSettings, written: _Written,
             notes: list[str]) -> dict[str, Any]:
    """What `run_merge` returns (and the CLI prints): see its docstring for the keys."""
    summary: dict[str, Any] = {
        "out": str(out),
        "merge_method": cfg.merge_method,
        "num_tensors": len(pl.plan),
        "num_parameters": written.num_parameters,
        "num_layers": len(pl.layer_map),
        "num_shards": written.num_shards,
        "architecture": written.config.get("architectures", [None])[0],
        "reward_model": pl.is_rm,
        "dtype": written.config.get("dtype"),
        "converted_heads": pl.converted,
        "averaged_without_base": pl.averaged,
        "left_out": pl.left_out,
        "legacy_buffers_left_out": [f"{r}: {n}" for r, lay in pl.layout.items() for n in lay.buffers],
        "tokenizer_files": written.tokenizer_files,
        "notes": notes,
    }
    if pl.method.random:
        summary["random_seed"] = run.seed
    if written.calibration is not None:
        summary["calibration"] = written.calibration
    return summary


def merge_config(cfg: MergeConfig, out_dir: str | Path, options: MergeOptions | None = None, *,
                 config_text: str | None = None, **fields: Any) -> dict[str, Any]:
    """Run a validated config; see `run_merge`. `fields` override `options` (`MergeOptions` fields).

    Every check (options, inputs, plan, tokenizer, calibration data) runs before the output directory is
    built; the directory appears complete or not at all (`build_dir_atomic`).
    """
    opts = MergeOptions.of(options, **fields)
    out = check_output_dir(out_dir, overwrite=opts.overwrite)
    run = _check_options(opts, cfg)
    method = get_method(cfg.merge_method)
    unsafe = opts.allow_unsafe_weights
    sources = {ref: ModelSource(ref, resolve_model_dir(ref, allow_pickle=unsafe), allow_pickle=unsafe)
               for ref in cfg.referenced_models()}
    try:
        pl = _Planner(cfg, method, sources)
        pl.build()
        if opts.calibrate_data is not None:
            if not pl.is_rm:
                raise ConfigError("--calibrate-data measures reward statistics, but this merge does not produce a "
                                  "reward model")
            check_calibration_data(opts.calibrate_data)
        notes = _unused_parameter_notes(cfg, method)
        tok_dir = _tokenizer_dir(cfg, pl, sources, opts, notes)
        with build_dir_atomic(out, overwrite=opts.overwrite) as tmp:
            written = _write_output(tmp, out, cfg, pl, sources, run, opts, tok_dir, config_text)
    finally:
        for s in sources.values():
            s.close()
    for n in notes:
        LOG.info(n)
    if pl.left_out:
        LOG.info("left out (LM heads, not part of a reward model): %s", ", ".join(pl.left_out))
    return _summary(out, cfg, pl, run, written, notes)


def _unused_parameter_notes(cfg: MergeConfig, method: MergeMethod) -> list[str]:
    used = {p.name for p in method.parameters}
    seen: set[str] = set()
    for scope in [cfg.parameters, *[m.parameters for m in cfg.models or ()],
                  *[s.parameters for s in cfg.slices or ()],
                  *[src.parameters for s in cfg.slices or () for src in s.sources]]:
        seen.update(scope or ())
    return [f"parameter '{n}' is not used by merge_method {method.name} (ignored, as mergekit does)"
            for n in sorted(seen - used)]


def run_merge(config_path: str | Path, out_dir: str | Path, options: MergeOptions | None = None, *,
              allow_pickle: bool | None = None, **fields: Any) -> dict[str, Any]:
    """Merge the models of a mergekit-style YAML config into `out_dir`; returns a summary.

    Options: a `MergeOptions`, or its fields as keywords (`device`, `random_seed`, `out_shard_size`, `dtype`,
    `allow_unsafe_weights`, `overwrite`, `calibrate_data`); `allow_pickle` is the deprecated name of
    `allow_unsafe_weights`.

    Summary keys: out, merge_method, num_tensors, num_parameters, num_layers, num_shards, architecture,
    reward_model, dtype, converted_heads, averaged_without_base, left_out, tokenizer_files, notes, and
    random_seed for the DARE methods, and calibration (the measured reward mean/std) with `calibrate_data`: a
    file of responses the merged RM scores before OUT appears. User errors raise `ConfigError` /
    `BonsynthError` and leave no output.
    """
    opts = MergeOptions.of(options, allow_pickle=allow_pickle, **fields)
    cfg, text = load_config(config_path)
    return merge_config(cfg, out_dir, opts, config_text=text)
