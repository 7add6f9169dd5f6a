"""One process per output directory at a time.

Two runs writing the same directory interleave their appends and duplicate rows, so `generate` and `loop`
hold an exclusive `flock` on `DIR/.lock` for as long as they write. The kernel drops the lock when the holder
dies, even on SIGKILL, so a lock left by a killed run is stale by construction and the next run simply takes
it over. The holder writes its pid into the file, so the refusal can name it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from bonsynth.errors import ConfigError

LOCK_FILE = ".lock"


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="utf-8").strip()
    except OSError:
        return "another process"
    return f"pid {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def dir_lock(directory: str | Path, *, what: str = "bonsynth run") -> Iterator[Path]:
    """Hold `directory/.lock` exclusively; a second holder gets a `ConfigError` naming the first one's pid."""
    directory = Path(directory)
    path = directory / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(
                f"{directory} is in use by another {what} ({_holder(path)}); wait for it to finish, "
                "or stop it, before running again on this directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
