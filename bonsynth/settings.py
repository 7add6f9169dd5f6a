"""Config fields that describe themselves: help text, command-line flag, and whether they enter a fingerprint.

A dataclass config declares each field with `setting(...)` instead of `field(...)`. Three readers use the
description, so none keeps its own list of the fields:

- the CLI generates its click options from it (`bonsynth.cli.options`), as mergekit's `add_merge_options`
  and vLLM's `EngineArgs.add_cli_args` do: a new field is a new flag, with its help, in one place;
- the fingerprint that `--resume` checks leaves out the fields marked `fingerprint=False` (they do not change
  what a run writes) and, while unset, those marked `"if_set"` (added later: older runs still resume);
- a `FieldError` names fields in backticks: the library shows the field (`max_model_len`), the CLI the flag
  (`--max-model-len`), from one message.

It imports only `bonsynth.errors`, so every layer may describe its config with it.
"""

from __future__ import annotations

import dataclasses
import re
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
    range: tuple[float, float] | None = None  # a number within [lo, hi]
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
    """The command-line flag of a field, e.g. long_prompt -> --long-prompts."""
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




def int_at_least(name: str, value: Any, low: int) -> None:
    """The one check for a whole-number field: a bool or a float is not one, a value below `low` is refused."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise FieldError(f"`{name}` must be an integer >= {low} (got {value!r})")


PREFIX_SHARING_MODES = ("auto", "on", "off")


def check_prefix_sharing(value: Any) -> None:
    """`prefix_sharing` as the scorers take it: a mode name, or True/False from the library."""
    if not isinstance(value, bool) and value not in PREFIX_SHARING_MODES:
        raise FieldError(f"`prefix_sharing` must be auto, on or off (got {value!r})")


# Help texts that several configs share (generate, judge, rm score, serve), written once.
UNSAFE_WEIGHTS_HELP = ("Also load pickle .bin/.pt weights, which can run code on load (default: safetensors only). "
                       "Use only for files you trust.")
PREFIX_SHARING_HELP = ("Score responses that share a prompt on one pass over the prompt (causal RMs): auto = when "
                       "prompts repeat, on = always, off = never. Rewards match either way, up to float rounding.")
