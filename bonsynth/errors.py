"""User-facing errors.

Anything a user can cause (bad input, bad config, a missing model) raises a `BonsynthError`. The CLI turns it
into one clear line on stderr and exit code 2, never a traceback. A broken invariant of bonsynth's own raises
`InternalError` instead: one line that asks for a bug report, and exit code 1, since no input would fix it.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path


class BonsynthError(Exception):
    """An error caused by the user's input or configuration (exit code 2)."""

    exit_code = 2


class InternalError(BonsynthError):
    """A bonsynth bug (an invariant of its own broke), not the user's doing: exit code 1 and a bug-report request.

    A `BonsynthError` subclass so that every handler that cleans up after a failed run still does; the CLI
    tells it apart by its exit code and adds `REPORT_HINT`.
    """

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(f"internal: {message}")


REPORT_HINT = "this is a bug in bonsynth, not in your input; please report it with the command you ran"


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


class EnvironmentIOError(BonsynthError):
    """The machine refused a write or read the user can fix: a full disk, a read-only or forbidden path."""


# errno values that say something about the user's disk or paths, not about bonsynth.
USER_IO_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                            errno.EISDIR, errno.ENAMETOOLONG, errno.EFBIG, errno.EMFILE})


def describe_io_error(e: OSError, path: str | Path | None = None) -> str:
    """`PATH: No space left on device`, with the path the OS named, else the one given."""
    where = e.filename if e.filename is not None else path
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (free some space, then run again; a --resume continues from the last complete batch)"
    return f"{where}: {reason}" if where is not None else reason


@contextlib.contextmanager
def io_errors(path: str | Path | None = None) -> Iterator[None]:
    """Turn a full disk or a forbidden path into one line naming the file (exit 2), not a traceback."""
    try:
        yield
    except OSError as e:
        if e.errno in USER_IO_ERRNOS:
            raise EnvironmentIOError(describe_io_error(e, path)) from e
        raise


def user_error_line(e: BaseException) -> tuple[str, int] | None:
    """The `error: ...` line and exit code for an error the user can act on, or None for anything else (a
    bug keeps its traceback). One rule for every entry point: the CLI and the loop's generation worker."""
    if isinstance(e, BonsynthError):
        # user errors exit 2; an InternalError (a bonsynth bug) exits 1 and asks for a report, still one line
        hint = f" ({REPORT_HINT})" if isinstance(e, InternalError) else ""
        return f"error: {e}{hint}", e.exit_code
    if isinstance(e, OSError) and e.errno in USER_IO_ERRNOS:
        # a full disk or a forbidden path, wherever it surfaced: the user can fix it, so no traceback
        return f"error: {describe_io_error(e)}", 2
    return None
