"""User-facing errors.

Anything a user can cause (bad input, bad config, a missing model) raises a `BonsynthError`. The CLI turns it
into one clear line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

from pathlib import Path


class BonsynthError(Exception):
    """An error caused by the user's input or configuration (exit code 2)."""

    exit_code = 2


class InputError(BonsynthError):
    """Bad input data: names the file, the line (1-based, for line-oriented files) and the field."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.reason = message
        where = ""
        if self.path is not None:
            where = self.path
            if line is not None:
                where += f":{line}"
            where += ": "
        if field is not None:
            where += f"field '{field}': "
        super().__init__(where + message)


class ConfigError(BonsynthError):
    """A bad config or recipe (YAML) or bad command-line combination."""
