"""`RunDir`: the one owner of a `generate` run directory, for every engine (local, `BestOfN`, Ray).

Life cycle of OUT:

1. open: take the directory's lock (a second run on it is refused before it loads a model), then either start a
   new run (a fresh state.json) or pick up the one there under `--resume`, after checking that its config
   fingerprint and its prompts are this run's;
2. write: batches go through the durable writer (`outputs.DurableWriter`), which cuts the files back to
   state.json first, so a crash at any point resumes without loss or duplicates;
3. finish: the manifest, then `complete` in state.json (a run killed in between finishes on `--resume`);
4. clean up: a run that fails before anything durable exists leaves nothing behind. A run that cannot be
   resumed (`resumable=False`: `BestOfN.write`, whose prompts live in memory) leaves nothing behind on any
   failure before its finish, since a half-written directory would only block the next write.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from bonsynth.errors import ConfigError, InputError
from bonsynth.generate import outputs
from bonsynth.locks import LOCK_FILE, dir_lock


class RunConfig(Protocol):
    """What a run directory needs to know of the run's config (`GenerateConfig` is one)."""

    out: str
    resume: bool
    prompts: str

    def fingerprint(self) -> str: ...

    def fingerprinted(self) -> dict: ...


def _is_debris(name: str) -> bool:
    """What a run killed before its first state.json can leave: a half-written state file and the lock."""
    return name in (LOCK_FILE, outputs.STATE + ".tmp") or (name.startswith(f".{outputs.STATE}.") and name.endswith(".tmp"))


def read_state(state_path: Path) -> dict:
    """state.json, or one clear line when it is damaged (it is written atomically, so only an outside edit or a
    failing disk can damage it)."""
    hint = (f"it records how far the run in {state_path.parent} got. Restore it, or start again with another "
            "--out (or delete the directory)")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg}); {hint}", path=state_path, line=e.lineno) from None
    except UnicodeDecodeError:
        raise InputError(f"not UTF-8 text; {hint}", path=state_path) from None
    if not isinstance(state, dict) or not isinstance(state.get("offsets", {}), dict):
        raise InputError(f"not a bonsynth run state; {hint}", path=state_path)
    for key in ("prompts_done", "config_fingerprint"):
        if key not in state:
            raise InputError(f"not a bonsynth run state; {hint}", path=state_path, field=key)
    return state


def _make_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory; choose a directory path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --out {out}: {e.strerror or e}") from None


def _open_state(cfg: RunConfig, out: Path, prompts_digest: str | None) -> tuple[dict, bool]:
    """The state of OUT: new, or the run to `--resume` (same config, same prompts). Returns (state, fresh).

    The caller holds the directory's lock.
    """
    state_path = out / outputs.STATE
    fp = cfg.fingerprint()
    if state_path.exists():
        state = read_state(state_path)
        if not cfg.resume:
            raise ConfigError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        if state.get("config_fingerprint") != fp:
            old = state.get("config", {})
            new = cfg.fingerprinted()
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(f"--resume with a different config than the run in {out} (differs in: {', '.join(diff) or '?'})")
        known = state.get("prompts_digest")
        if known is not None and prompts_digest is not None and known != prompts_digest:
            raise ConfigError(
                f"--resume: the prompts in {cfg.prompts} are not the ones the run in {out} started with (the file "
                "was edited since); restore it, or start a new run with another --out"
            )
        if known is None and prompts_digest is not None:
            state["prompts_digest"] = prompts_digest  # a run from before digests: recorded from now on
        return state, False
    others = [p.name for p in out.iterdir() if not _is_debris(p.name)]
    if others:
        raise ConfigError(f"{out} exists and is not empty (it holds {others[0]!r}, and no bonsynth run); "
                          "choose another --out")
    for p in out.iterdir():  # a run killed before its first state: nothing was done, so nothing to keep
        if p.name != LOCK_FILE:
            p.unlink(missing_ok=True)
    state = {
        "config_fingerprint": fp,
        "config": cfg.fingerprinted(),
        "prompts_done": 0,
        "offsets": {name: 0 for name in outputs.DATA_FILES},
        "complete": False,
    }
    if prompts_digest is not None:
        state["prompts_digest"] = prompts_digest
    outputs.write_json_atomic(state_path, state)
    return state, True


class RunDir:
    """An open run directory: its path and state, the durable writer, the finish. Made by `RunDir.open`."""

    def __init__(self, out: Path, state: dict, *, fresh: bool) -> None:
        self.out = out
        self.state = state
        self.fresh = fresh
        self.finished = False
        self._writers: list[outputs.DurableWriter] = []

    @classmethod
    @contextlib.contextmanager
    def open(cls, cfg: RunConfig, prompts_digest: str | None = None, *, resumable: bool = True) -> Iterator[RunDir]:
        """Lock OUT for this run, open its state (new or resumed), and clean up after a failure (see the module).

        One process writes a directory at a time: a second run on it exits 2 naming the holder's pid (two
        resumes at once would append the same batches twice).
        """
        out = Path(cfg.out)
        created = not out.exists()
        _make_out_dir(out)
        with dir_lock(out, what="bonsynth generate"):
            state, fresh = _open_state(cfg, out, prompts_digest)
            run = cls(out, state, fresh=fresh)
            try:
                yield run
            except BaseException:
                run.close_writers()
                if run._nothing_to_keep(resumable):
                    run._remove(created)
                raise
            finally:
                run.close_writers()

    @property
    def complete(self) -> bool:
        """Whether the run was finished (manifest written), by this process or an earlier one."""
        return bool(self.state.get("complete"))

    @property
    def prompts_done(self) -> int:
        return int(self.state.get("prompts_done", 0))

    def writer(self) -> outputs.DurableWriter:
        """The durable writer of the data files (closed when the run directory is left, if not before)."""
        w = outputs.DurableWriter(self.out, self.state)
        self._writers.append(w)
        return w

    def close_writers(self) -> None:
        while self._writers:
            self._writers.pop().close()

    def finish(self, manifest: dict) -> None:
        """The manifest, then `complete` in state.json: a run killed in between finishes on --resume."""
        self.close_writers()
        outputs.write_json_atomic(self.out / outputs.MANIFEST, manifest)
        self.state["complete"] = True
        outputs.write_json_atomic(self.out / outputs.STATE, self.state)
        self.finished = True

    def _nothing_to_keep(self, resumable: bool) -> bool:
        """A new run with no durable batch yet, or one that could never be resumed: remove what it wrote."""
        if not self.fresh or self.finished:
            return False
        return self.prompts_done == 0 or not resumable

    def _remove(self, created: bool) -> None:
        if created:
            shutil.rmtree(self.out, ignore_errors=True)
            return
        for p in self.out.iterdir():  # the user's own (empty) directory: take back only what this run put there
            if p.name != LOCK_FILE:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
