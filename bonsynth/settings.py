"""Config fields that describe themselves: help text, command-line flag, and whether they enter a fingerprint.

A dataclass config declares each field with `setting(...)` instead of `field(...)`. Three readers use the
description, so none keeps its own list of the fields:

- the CLI generates its click options from it (`bonsynth.cli.options`), as mergekit's `add_merge_options`
  and vLLM's `EngineArgs.add_cli_args` do: a new field is a new flag, with its help, in one place;
- the fingerprint that `--resume` checks leaves out the fields marked `fingerprint=False` (they do not change
  what a run writes) and, while unset, those marked `"if_set"` (added later: older runs still resume);
- a `FieldError` names fields in backticks: the library shows the field (`max_model_len`), the CLI the flag
  (`--max-model-len`), from one message;
- the declared checks (`choices`, bounds `ge`/`gt`/`le`/`lt`) run when the config is built (`check_declared`), and a
  loop recipe's sections are the same fields as pydantic fields (`yaml_fields`), so a YAML key, a flag and a
  library keyword are one declaration with one default and one set of bounds.

It imports only `bonsynth.errors` (and pydantic, inside `yaml_fields`), so every layer may describe its config
with it.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Literal

from bonsynth.errors import ConfigError

_KEY = "bonsynth"
_MISSING = dataclasses.MISSING

Fingerprint = Literal[True, False, "if_set"]


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one config field looks on the command line and in the fingerprint."""

    help: str = ""
    flag: str | None = None  # default: --field-name
    fingerprint: Fingerprint = True
    manifest_if_set: bool = False  # left out of the manifest's config while None
    cli: bool = True  # False: library/recipe only (no flag)
    type: type | None = None  # the value type when the default is None
    choices: tuple[str, ...] | None = None
    parse: Callable[[str, str], Any] | None = None  # (text, flag) -> value; a bad text raises ConfigError
    multiple: bool = False  # a repeatable flag that fills a list
    negatable: bool = False  # --x/--no-x instead of a plain on-switch
    invert: bool = False  # the flag turns the field off (show_progress <- --quiet)
    ge: float | None = None  # bounds of a number: checked by `check_declared`, and by a recipe's YAML schema
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    metavar: str | None = None
    group: str | None = None  # the part of the config it belongs to; `--help` lists options by part


def setting(default: Any = _MISSING, *, default_factory: Callable[[], Any] | None = None, **spec: Any) -> Any:
    """A dataclass field with its `Setting` (help, flag, fingerprint) attached as metadata."""
    meta = {_KEY: Setting(**spec)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def in_group(group: str) -> Callable[..., Any]:
    """`setting` with its part of the config filled in: `_sampling = in_group("sampling")`."""

    def make(default: Any = _MISSING, **spec: Any) -> Any:
        return setting(default, group=group, **spec)

    return make


def described(cls: type) -> Iterator[tuple[dataclasses.Field, Setting]]:
    """The dataclass's fields in declaration order, each with its Setting (a plain field gets the defaults)."""
    for f in dataclasses.fields(cls):
        yield f, f.metadata.get(_KEY, Setting())


def spec_of(cls: type, name: str) -> Setting:
    return next(s for f, s in described(cls) if f.name == name)


def flag_of(cls: type, name: str) -> str:
    """The command-line flag of a field, e.g. max_new_tokens -> --max-new-tokens (or the one it declares)."""
    flag = spec_of(cls, name).flag
    return flag if flag is not None else "--" + name.replace("_", "-")


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


def is_required(f: dataclasses.Field) -> bool:
    return f.default is _MISSING and f.default_factory is _MISSING


def fingerprint_view(obj: Any) -> dict[str, Any]:
    """The fields that decide what a run writes: `fingerprint=False` ones dropped, `"if_set"` ones while unset."""
    out = {}
    for f, spec in described(type(obj)):
        value = getattr(obj, f.name)
        if spec.fingerprint is False or (spec.fingerprint == "if_set" and (value is None or value is False)):
            continue
        out[f.name] = value
    return out


def names_where(cls: type, test: Callable[[Setting], bool]) -> frozenset[str]:
    return frozenset(f.name for f, spec in described(cls) if test(spec))


def not_fingerprinted(cls: type) -> frozenset[str]:
    """Fields that may differ between a run and its --resume (or between the shards of one run)."""
    return names_where(cls, lambda s: s.fingerprint is False)


_NAME = re.compile(r"`([a-z][a-z0-9_]*)`")


class FieldError(ConfigError):
    """A bad config value, its message naming fields in backticks: "`n` must be >= 1". As a string it names the
    fields (`n must be >= 1`: the library's and a recipe's words); `render(flag)` names them the CLI's way."""

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.render(str))

    def render(self, name: Callable[[str], str]) -> str:
        return _NAME.sub(lambda m: name(m.group(1)), self.template)

    def for_flags(self, cls: type) -> ConfigError:
        """The same error naming `cls`'s flags; a name that is not a field of `cls` stays as it is."""
        fields = {f.name for f in dataclasses.fields(cls)}

        def flag(name: str) -> str:
            return flag_of(cls, name) if name in fields else name

        return ConfigError(self.render(flag))


def comma_list(cast: Callable[[str], Any], what: str, example: str) -> Callable[[str, str], list]:
    """A `parse` for comma-separated values, e.g. --reward-weights 0.7,0.3."""

    def parse(text: str, flag: str) -> list:
        try:
            return [cast(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"{flag} must be comma-separated {what}, e.g. {example} (got {text!r})") from None

    return parse


def number(text: str, flag: str) -> float:
    """A `parse` for a number given as text, so a typo is one `error:` line naming the flag."""
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag} must be a number, e.g. 0.25 (got {text!r})") from None




def _num(x: float) -> str:
    return f"{x:g}"


BOUNDS = ("ge", "gt", "le", "lt")


def bounds_text(spec: Setting) -> str | None:
    """The declared bounds as a phrase: ">= 1", "in (0, 1]", "in [0, 1)"; None without bounds."""
    lo = f"[{_num(spec.ge)}" if spec.ge is not None else f"({_num(spec.gt)}" if spec.gt is not None else None
    hi = f"{_num(spec.le)}]" if spec.le is not None else f"{_num(spec.lt)})" if spec.lt is not None else None
    if lo and hi:
        return f"in {lo}, {hi}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1:]}"
    if hi:
        return f"{'<=' if hi[-1] == ']' else '<'} {hi[:-1]}"
    return None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _wants_int(hint: Any) -> bool:
    """An `int` or `int | None` field (a float there is refused; `float` fields take ints)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return int in args and float not in args


def check_declared(obj: Any) -> None:
    """The checks each field of `obj` declares (`choices`; bounds `ge`, `gt`, `le`, `lt`, whole numbers for an int
    field), on every field that is set: a bad value is a `FieldError` naming the field. A config runs its
    cross-field checks after this."""
    hints = _hints(type(obj))
    for f, spec in described(type(obj)):
        value = getattr(obj, f.name)
        if value is None:
            continue
        if spec.choices is not None and not isinstance(value, bool) and value not in spec.choices:
            *head, last = spec.choices
            raise FieldError(f"`{f.name}` must be {', '.join(head)} or {last} (got {value!r})")
        text = bounds_text(spec)
        if text is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FieldError(f"`{f.name}` must be a number {text} (got {value!r})")
        if isinstance(value, float) and _wants_int(hints[f.name]):
            raise FieldError(f"`{f.name}` must be a whole number {text} (got {value!r})")
        if ((spec.ge is not None and not value >= spec.ge) or (spec.gt is not None and not value > spec.gt)
                or (spec.le is not None and not value <= spec.le) or (spec.lt is not None and not value < spec.lt)):
            raise FieldError(f"`{f.name}` must be {text} (got {value!r})")


def yaml_fields(cls: type, names: tuple[str, ...]) -> dict[str, Any]:
    """Fields `names` of the settings dataclass `cls` as pydantic field definitions (for `create_model`): the
    same type, default, help, bounds, choices (a `Literal`) and fingerprint mark. A YAML section built from them
    (the loop recipe's `generation`, `selection`, `synth`) declares nothing again."""
    from pydantic import Field

    hints, fields = _hints(cls), {f.name: (f, spec) for f, spec in described(cls)}
    out: dict[str, Any] = {}
    for name in names:
        f, spec = fields[name]
        hint = hints[name]
        if spec.choices is not None:
            choice = Literal[spec.choices]  # type: ignore[valid-type]
            hint = choice | None if type(None) in typing.get_args(hint) else choice
        kw: dict[str, Any] = {k: getattr(spec, k) for k in BOUNDS if getattr(spec, k) is not None}
        if spec.help:
            kw["description"] = spec.help
        if spec.fingerprint is not True:
            kw["json_schema_extra"] = {"fingerprint": spec.fingerprint}
        if f.default_factory is not _MISSING:
            out[name] = (hint, Field(default_factory=f.default_factory, **kw))
        else:
            out[name] = (hint, Field(... if f.default is _MISSING else f.default, **kw))
    return out


PREFIX_SHARING_MODES = ("auto", "on", "off")


# Help texts that several configs share (generate, judge, rm score, serve), written once.
UNSAFE_WEIGHTS_HELP = ("Also load pickle .bin/.pt weights, which can run code on load (default: safetensors only). "
                       "Use only for files you trust.")
PREFIX_SHARING_HELP = ("Score responses that share a prompt on one pass over the prompt (causal RMs): auto = when "
                       "prompts repeat, on = always, off = never. Rewards match either way, up to float rounding.")
