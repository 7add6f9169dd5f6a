"""The one YAML loader for bonsynth's configs (merge configs, loop recipes), and bounded value reprs.

Why a loader of our own: YAML aliases let a few hundred bytes stand for a billion nodes ("billion laughs").
PyYAML composes such a file in milliseconds, since an alias is a reference to the node it names, but whatever
walks the value afterwards (pydantic validation, the repr in an error message) walks every expanded node and
never finishes. `load_yaml` counts the nodes the document expands to while it is composed, and refuses one over
`MAX_NODES` (no config comes near it) as a one-line `ConfigError` naming the file. A syntax error names the line.

`short_repr` is the repr that error messages use for a user's value: bounded in depth, items and characters, so
a message never costs more than the value's first few items.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

from bonsynth.errors import ConfigError

MAX_NODES = 100_000  # expanded YAML nodes (scalars, sequences, mappings) a config may hold
REPR_CHARS = 200

_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 8
_repr.maxstring = _repr.maxother = REPR_CHARS


def short_repr(value: Any, limit: int = REPR_CHARS) -> str:
    """`repr(value)` for an error message: at most `limit` characters, cheap for any size of value."""
    text = _repr.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _TooBig(Exception):
    def __init__(self, why: str, line: int | None) -> None:
        super().__init__(why)
        self.why, self.line = why, line


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses a document whose alias expansion exceeds `MAX_NODES` nodes (or is recursive)."""

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            expanded_size(node, MAX_NODES)
        return node


def expanded_size(root: yaml.Node, limit: int) -> int:
    """The number of nodes `root` stands for with every alias expanded; `_TooBig` past `limit`.

    Each distinct node is sized once (memoised by identity), so this costs the composed size, not the expanded one.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            size = 1 + sum(sizes[id(c)] for c in _children(node))
            if size > limit:
                raise _TooBig(f"the YAML expands to more than {limit:,} values (nested aliases?)", node.start_mark.line + 1)
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in active:
            raise _TooBig("a recursive alias (an alias inside the node it names)", node.start_mark.line + 1)
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(path: str | Path, what: str = "config") -> tuple[Any, str]:
    """Read and parse one YAML file; returns (data, text). Every problem is a `ConfigError` naming the file.

    `what` names the file in "not found" messages ("merge config", "recipe").
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {path}" if not p.exists() else f"{what} is not a file: {path}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {e.start + 1})") from None
    return parse_yaml(text, str(path)), text


def parse_yaml(text: str, source: str = "config") -> Any:
    """Parse YAML text with the bounded loader; errors are one line: `source:LINE: problem`."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except _TooBig as e:
        raise ConfigError(f"{source}:{e.line}: refused: {e.why}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
        if mark is None:
            raise ConfigError(f"{source}: not valid YAML: {problem}") from None
        raise ConfigError(f"{source}:{mark.line + 1}: {problem} (not valid YAML, column {mark.column + 1})") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None
