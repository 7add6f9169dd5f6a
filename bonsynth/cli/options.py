"""Click options generated from a config's fields (`bonsynth.settings`), and the config built back from them.

The config is the one source of truth: its field's flag, type, default, choices and help become the option;
`config_kwargs` turns the parsed options back into the config's keyword arguments. A command adds by hand
only what is not a config field (the engine choice, backend knobs, the judge to run afterwards).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from bonsynth.settings import FieldError, described, field_default, flag_of, is_required


class GroupedOption(click.Option):
    """An option that knows which part of the config it sets (`--help` lists options part by part)."""

    def __init__(self, *args: Any, group: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


class GroupedCommand(click.Command):
    """A command whose `--help` lists its options under one heading per part (Run, Sampling, Selection...),
    in `part_order` (then in the order the others first appear); options without a part go under "Other
    options", last."""

    def __init__(self, *args: Any, part_order: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.part_order = part_order

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        parts: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                parts.setdefault(getattr(param, "group", None) or "other", []).append(record)
        rank = {p: i for i, p in enumerate(self.part_order)}
        # one first-column width for every section (click's own cap, 30), so the help texts wrap as in an
        # ungrouped listing whatever the section
        width = min(30, max((len(name) for rows in parts.values() for name, _ in rows), default=0))
        for part, rows in sorted(parts.items(), key=lambda kv: (kv[0] == "other", rank.get(kv[0], len(rank)))):
            with formatter.section(f"{part.capitalize()} options"):
                formatter.write_dl([(name.ljust(width) if len(name) <= width else name, text) for name, text in rows])


def part_option(group: str) -> Callable[..., Callable]:
    """`click.option` for a hand-written option that belongs to a part of the `--help` listing."""

    def option(*decls: str, **kw: Any) -> Callable:
        return click.option(*decls, cls=GroupedOption, group=group, **kw)

    return option


def _option(f, spec, flag: str) -> Callable:
    default = None if is_required(f) else field_default(f)
    kw: dict[str, Any] = {"help": spec.help or None, "cls": GroupedOption, "group": spec.group}
    decls = [flag, f.name]
    if is_required(f):
        kw["required"] = True
    if spec.multiple:
        kw["multiple"] = True
        if spec.parse is not None:
            raise TypeError(f"{f.name}: a repeatable option cannot have a parse function")
    elif spec.parse is not None:
        kw["default"] = None  # parsed from its text after click, so a typo is one line naming the flag
    elif isinstance(default, bool):
        if spec.negatable:
            decls = [f"{flag}/--no-{flag[2:]}", f.name]
            kw.update(default=default, show_default=True)
        else:
            kw.update(is_flag=True, default=False)  # an on-switch (an inverted field: the switch turns it off)
    else:
        if spec.choices is not None:
            kw["type"] = click.Choice(list(spec.choices))
        else:
            kw["type"] = spec.type or (type(default) if default is not None else str)
        kw["default"] = default
        kw["show_default"] = default is not None
    if spec.metavar:
        kw["metavar"] = spec.metavar
    return click.option(*decls, **kw)


def config_options(cls: type) -> Callable[[Callable], Callable]:
    """A decorator adding one click option per CLI field of the dataclass `cls`, in declaration order."""
    options = [_option(f, spec, flag_of(cls, f.name)) for f, spec in described(cls) if spec.cli]

    def decorate(fn: Callable) -> Callable:
        for opt in reversed(options):  # click lists options in the order the decorators are written
            fn = opt(fn)
        return fn

    return decorate


def config_kwargs(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """Pop the parsed values of `cls`'s options from `params` and return them as `cls` keyword arguments."""
    out: dict[str, Any] = {}
    for f, spec in described(cls):
        if not spec.cli or f.name not in params:
            continue
        value = params.pop(f.name)
        if spec.multiple:
            value = list(value)
        elif spec.parse is not None and value is not None:
            value = spec.parse(value, flag_of(cls, f.name))
        elif spec.invert:
            value = not value
        out[f.name] = value
    return out


def build_config(cls: type, **kwargs: Any) -> Any:
    """`cls(**kwargs)` and its run checks (`validate`, where it has one), an error naming the flags, not the
    fields: the library says "`max_model_len` must be ...", the command line "--max-model-len must be ..."."""
    try:
        obj = cls(**kwargs)
        if hasattr(obj, "validate"):
            obj.validate()
    except FieldError as e:
        raise e.for_flags(cls) from None
    return obj
