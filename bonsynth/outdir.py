"""Output directories that appear whole or not at all (`rm train`, `merge`).

A model directory is many files written one after another; a crash, a full disk or Ctrl-C in the middle
must not leave a directory that looks like a model (config.json only) or half replace an existing one.
`build_dir_atomic` hands out a hidden temp directory beside the target; only when the body succeeds are its
files fsynced and the directory renamed into place (the old one, with `overwrite`, is moved aside first and
deleted after). On any error the temp directory is removed and the target is left as it was.

Every builder of a directory uses it (`rm train`, `merge`, `rm slice`, GGUF import, `gather`, the loop's policy
and RM updates, the demo and quickstart models), so none writes its own "temp directory, then rename". A build
killed outright (SIGKILL, power loss) cannot clean up; it leaves only its hidden temp directory, never a partial
OUT, and the next build of the same OUT removes it. The builder holds an advisory lock on its temp directory
while it works, which the kernel drops when the process dies, so a temp directory that can be locked is debris
and one that cannot belongs to a build still running.

File-system errors the user must act on (disk full, read-only file system, no permission, a file where a
directory should be) become one-line `BonsynthError`s naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from bonsynth.data.writers import fsync_dir
from bonsynth.errors import BonsynthError, ConfigError

# errno -> what the user should read; everything else is a bug or a transient error and propagates as is.
_ENV_ERRNOS = {
    errno.ENOSPC: "no space left on device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a path component is a file, not a directory",
}
_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")


def os_error(e: OSError, path: str | Path, *, action: str = "write") -> BonsynthError | None:
    """A one-line user error for an environment OSError (disk full, read-only, ...), naming the file; else None."""
    reason = _ENV_ERRNOS.get(e.errno) if e.errno is not None else None
    if reason is None:
        return None
    where = e.filename if e.filename else path
    return BonsynthError(f"cannot {action} {where}: {reason}")


def _wrapped_os_error(e: Exception, path: Path) -> BonsynthError | None:
    """An OS error that a native writer reported as its own exception type (safetensors' Rust writer says
    "... (os error 28)"): the same one-line user error, naming the directory being written."""
    m = _OS_ERROR_IN_TEXT.search(str(e))
    if m is None:
        return None
    return os_error(OSError(int(m.group(1)), str(e)), path)


def check_output_dir(out: str | Path, *, overwrite: bool, what: str = "output directory",
                     flag: str = "--overwrite") -> Path:
    """Refuse, before any long work, an output that is a file, sits under a file, or is a non-empty directory."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ConfigError(f"{what} {out} is an existing file, not a directory")
        if not overwrite and any(out.iterdir()):
            raise ConfigError(f"{what} {out} already exists and is not empty (use {flag} to replace it)")
        return out
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"cannot create {what} {out}: {parent} is a file, not a directory")
            break
    return out


@contextlib.contextmanager
def build_dir_atomic(out: str | Path, *, overwrite: bool = False, what: str = "output directory",
                     flag: str = "--overwrite") -> Iterator[Path]:
    """Yield a temp directory beside `out`; on success its contents replace `out` in one rename.

    `out` must be absent or an empty directory unless `overwrite`. Nothing is left behind on failure: the
    temp directory is removed and an existing `out` is untouched.
    """
    out = check_output_dir(out, overwrite=overwrite, what=what, flag=flag)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(out)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as e:
        raise (os_error(e, out.parent, action="create") or e) from e
    hold = _hold(tmp)
    try:
        try:
            yield tmp
            _fsync_tree(tmp)
            _replace_dir(tmp, out)
        except Exception as e:
            err = os_error(e, out) if isinstance(e, OSError) else _wrapped_os_error(e, out)
            if err is None:
                raise
            # Name the file as the user will look for it: under OUT, not under the temp directory.
            raise BonsynthError(str(err).replace(str(tmp), str(out))) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if hold is not None:
            os.close(hold)
    fsync_dir(out.parent)


def _hold(directory: Path) -> int | None:
    """An exclusive advisory lock on `directory` for as long as the returned descriptor is open (POSIX)."""
    try:
        import fcntl
    except ImportError:
        return None
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _remove_abandoned(out: Path) -> None:
    """Delete the temp directories that killed builds of `out` left (unlocked: no live process owns them)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.tmp-\d+-[0-9a-f]{{8}}")
    for p in out.parent.iterdir():
        if not pattern.fullmatch(p.name) or not p.is_dir() or p.is_symlink():
            continue
        fd = _hold(p)
        if fd is None:
            continue  # a build still running (or no locks on this system): not ours to touch
        try:
            shutil.rmtree(p, ignore_errors=True)
        finally:
            os.close(fd)


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(trash)
        try:
            tmp.rename(out)
        except BaseException:
            trash.rename(out)  # put the old one back: the caller sees an error and an unchanged OUT
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(out)


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root`, so the rename never publishes unwritten data."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))
