"""The merge config: mergekit's YAML schema, as pydantic models that *are* the YAML.

Accepted keys (mergekit 0.1.5 names and meanings):

    merge_method: passthrough | linear | slerp | task_arithmetic | ties | dare_ties | dare_linear
    base_model: PATH                 # required by slerp and the task-arithmetic family
    models:                          # either `models` ...
      - model: PATH
        parameters: {weight: 0.5, density: 1.0}
    slices:                          # ... or `slices` (exactly one of the two)
      - sources:
          - model: PATH
            layer_range: [0, 8]      # END exclusive
            parameters: {...}
        base_model: PATH             # optional, per slice
        parameters: {...}            # optional, per slice
    parameters: {normalize: true, rescale: true, lambda: 1.0, int8_mask: true, t: 0.5, weight: ..., density: ...}
    dtype: float32                   # the arithmetic dtype (inputs are rounded to it); default: promoted input dtype
    out_dtype: bfloat16              # the saved dtype; default: `dtype`
    tokenizer_source: base | PATH    # whose tokenizer files are copied; default: the base (or first model)

A parameter value is a scalar, a gradient (a list of numbers interpolated over the layers of a slice, t = i/(n-1)),
or a list of `{filter: SUBSTRING, value: ...}` entries where the first filter contained in the tensor name wins
(no filter, or `*`, matches everything). Precedence: a source's parameters, then the slice's, then the global ones.

Stricter than mergekit, on purpose: unknown keys and unknown parameter names are errors (a typo would otherwise
be ignored), a `density` outside (0, 1] is an error (mergekit silently clamps), and mergekit features bonsynth
does not implement (`modules`, `tokenizer`, `chat_template`, `tokenizer_source: union`, LoRA `model+lora`
references) are refused by name rather than ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bonsynth.data.yaml_io import load_yaml, short_repr
from bonsynth.errors import ConfigError

Scalar = bool | int | float | str

DTYPES = ("bfloat16", "float16", "float32", "float64")

# Every parameter name some supported method reads; anything else is a typo.
KNOWN_PARAMETERS = ("weight", "density", "normalize", "rescale", "lambda", "int8_mask", "t", "scale")

# mergekit keys we recognise but do not implement: refused with a clear message instead of "extra input".
UNSUPPORTED_KEYS = {
    "modules": "per-module merges ('modules') are not supported; use 'models' or 'slices'",
    "tokenizer": "'tokenizer' (vocabulary merging) is not supported; use 'tokenizer_source: base' or a model path",
    "chat_template": "'chat_template' is not supported; set the template on the tokenizer of tokenizer_source",
    "residual_weight": "'residual_weight' is not supported",
}


class ConditionalParameter(BaseModel):
    """One `{filter, value}` entry of a parameter: applies when `filter` is a substring of the tensor name."""

    model_config = ConfigDict(extra="forbid")
    value: Scalar | list[Scalar]
    filter: str | None = None


ParameterSetting = Scalar | list[Scalar] | ConditionalParameter | list[ConditionalParameter]


def _parse_setting(name: str, value: Any) -> ParameterSetting:
    """Validate one parameter value by hand so errors say what a value may be, not a pydantic union dump."""
    shape = "a scalar, a list of numbers (a gradient), or a list of {filter, value} entries"
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return ConditionalParameter.model_validate(value)
    if isinstance(value, list):
        if not value:
            raise ValueError(f"'{name}' is an empty list; expected {shape}")
        if all(isinstance(v, bool | int | float | str) for v in value):
            return list(value)
        if all(isinstance(v, dict) for v in value):
            return [ConditionalParameter.model_validate(v) for v in value]
    raise ValueError(f"'{name}' must be {shape}, got {short_repr(value)}")


def _iter_values(setting: ParameterSetting):
    """Every literal value inside a setting (gradient points and filtered values included)."""
    if isinstance(setting, ConditionalParameter):
        yield from _iter_values(setting.value)
    elif isinstance(setting, list):
        for item in setting:
            yield from _iter_values(item)
    else:
        yield setting


def _check_parameters(params: dict[str, Any] | None) -> dict[str, ParameterSetting] | None:
    if params is None:
        return None
    if not isinstance(params, dict):
        raise ValueError(f"'parameters' must be a mapping, got {short_repr(params)}")
    out: dict[str, ParameterSetting] = {}
    for name, raw in params.items():
        if name not in KNOWN_PARAMETERS:
            raise ValueError(f"unknown parameter '{name}' (known: {', '.join(KNOWN_PARAMETERS)})")
        setting = _parse_setting(name, raw)
        for v in _iter_values(setting):
            if name in ("weight", "density", "lambda", "t", "scale") and (
                isinstance(v, bool) or not isinstance(v, int | float)
            ):
                raise ValueError(f"'{name}' must be a number, got {short_repr(v)}")
            if name in ("normalize", "rescale", "int8_mask") and not isinstance(v, bool):
                raise ValueError(f"'{name}' must be true or false, got {short_repr(v)}")
            if name == "density" and not 0 < v <= 1:
                raise ValueError(f"density {v} is outside (0, 1]")
        out[name] = setting
    return out


def _check_model_ref(ref: str) -> str:
    if not ref or not ref.strip():
        raise ValueError("model reference is empty")
    if "+" in ref and not Path(ref).expanduser().exists():
        raise ValueError(f"'{ref}': LoRA references (model+lora) are not supported; merge the adapter first")
    return ref


class InputModelDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, Any] | None = None

    @field_validator("model")
    @classmethod
    def _ref(cls, v: str) -> str:
        return _check_model_ref(v)
    @field_validator("parameters")
    @classmethod
    def _params(cls, v: dict[str, Any] | None) -> dict[str, ParameterSetting] | None:
        return _check_parameters(v)


class InputSliceDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, Any] | None = None

    @field_validator("model")
    @classmethod
    def _ref(cls, v: str) -> str:
        return _check_model_ref(v)
    @field_validator("parameters")
    @classmethod
    def _params(cls, v: dict[str, Any] | None) -> dict[str, ParameterSetting] | None:
        return _check_parameters(v)

    @field_validator("layer_range")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        start, end = v
        if start < 0 or end <= start:
            raise ValueError(f"layer_range [{start}, {end}] must satisfy 0 <= START < END (END exclusive)")
        return v


class OutputSliceDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[InputSliceDefinition] = Field(min_length=1)
    base_model: str | None = None
    parameters: dict[str, Any] | None = None

    @field_validator("parameters")
    @classmethod
    def _params(cls, v: dict[str, Any] | None) -> dict[str, ParameterSetting] | None:
        return _check_parameters(v)


class MergeConfig(BaseModel):
    """A whole merge config file."""

    model_config = ConfigDict(extra="forbid")
    merge_method: str
    models: list[InputModelDefinition] | None = None
    slices: list[OutputSliceDefinition] | None = None
    base_model: str | None = None
    parameters: dict[str, Any] | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None

    @field_validator("parameters")
    @classmethod
    def _params(cls, v: dict[str, Any] | None) -> dict[str, ParameterSetting] | None:
        return _check_parameters(v)

    @field_validator("dtype", "out_dtype")
    @classmethod
    def _dtype(cls, v: str | None) -> str | None:
        try:
            return None if v is None else normalize_dtype(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None

    @field_validator("merge_method")
    @classmethod
    def _method(cls, v: str) -> str:
        from bonsynth.merge.methods import check_method_name

        check_method_name(v)
        return v

    @field_validator("base_model")
    @classmethod
    def _base(cls, v: str | None) -> str | None:
        return None if v is None else _check_model_ref(v)

    @field_validator("tokenizer_source")
    @classmethod
    def _tok(cls, v: str | None) -> str | None:
        if v == "union":
            raise ValueError("'union' (a merged vocabulary) is not supported; use 'base' or a model path")
        return v

    @model_validator(mode="after")
    def _one_input_kind(self) -> MergeConfig:
        if bool(self.models) == bool(self.slices):
            raise ValueError("exactly one of 'models' or 'slices' must be given (and not empty)")
        return self

    def referenced_models(self) -> list[str]:
        """Every model the config names, base first, without duplicates, in config order."""
        refs: list[str] = []
        if self.base_model:
            refs.append(self.base_model)
        for m in self.models or ():
            refs.append(m.model)
        for s in self.slices or ():
            if s.base_model:
                refs.append(s.base_model)
            refs.extend(src.model for src in s.sources)
        return list(dict.fromkeys(refs))


def normalize_dtype(name: str) -> str:
    """mergekit's dtype names (a `torch.` prefix allowed), plus the usual short aliases."""
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32",
               "fp64": "float64", "double": "float64"}
    n = str(name).removeprefix("torch.")
    n = aliases.get(n, n)
    if n not in DTYPES:
        raise ConfigError(f"unknown dtype '{name}' (choose from {', '.join(DTYPES)})")
    return n


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: `file: models[1].parameters: density 1.5 is outside (0, 1]`."""
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = loc[-1] if loc else None
        if e["type"] == "extra_forbidden" and key in UNSUPPORTED_KEYS:
            msg = UNSUPPORTED_KEYS[key]
        elif e["type"] == "extra_forbidden":
            msg = "unknown key (not part of the merge config schema)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "layer_range" in loc and e["type"] in ("tuple_type", "too_short", "too_long", "int_parsing", "int_type"):
            msg = "must be [START, END] (two integers, END exclusive)"
        else:
            msg = e["msg"].removeprefix("Value error, ")
        where = _format_loc(loc)
        lines.append(f"{where}: {msg}" if where else msg)
    return f"{source}: " + "; ".join(lines)


def parse_config(data: Any, source: str = "merge config") -> MergeConfig:
    """Validate an already-loaded YAML document."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return MergeConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: str | Path) -> tuple[MergeConfig, str]:
    """Read and validate a YAML merge config; returns the config and its text (saved beside the output)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"merge config not found: {p}")
    data, text = load_yaml(p, "merge config")
    return parse_config(data, str(p)), text


_NO_VALUE = object()


def evaluate_setting(setting: ParameterSetting, tensor_name: str, t: float) -> Any:
    """The value of one setting for one tensor at layer position `t` in [0, 1]; `_NO_VALUE` if no filter matches.

    A numeric gradient `[v0, ..., vn]` interpolates linearly at `t * n`; a non-numeric list picks `int(t * n)`
    (mergekit's rule). Filters are plain substrings of the tensor name.
    """
    if isinstance(setting, ConditionalParameter):
        setting = [setting]
    if not isinstance(setting, list):
        return setting
    if all(isinstance(e, ConditionalParameter) for e in setting):
        for cond in setting:
            if cond.filter is None or cond.filter == "*" or cond.filter in tensor_name:
                return evaluate_setting(cond.value, tensor_name, t)
        return _NO_VALUE
    numeric = all(isinstance(e, int | float) and not isinstance(e, bool) for e in setting)
    scaled = t * (len(setting) - 1)
    if not numeric:
        return setting[int(scaled)]
    i0 = int(scaled)
    i1 = min(len(setting) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * setting[i0] + frac * setting[i1]


def resolve(name: str, scopes: list[dict[str, ParameterSetting] | None], tensor_name: str, t: float) -> Any:
    """The first scope (highest precedence first) that gives `name` a value for this tensor; `_NO_VALUE` if none."""
    for scope in scopes:
        if scope and name in scope:
            value = evaluate_setting(scope[name], tensor_name, t)
            if value is not _NO_VALUE:
                return value
    return _NO_VALUE
