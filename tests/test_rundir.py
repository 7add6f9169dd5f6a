"""One owner per output directory (issue 14, item 2).

`RunDir` owns a `generate` run directory for the CLI pipeline, `BestOfN.write` and the Ray engine;
`outdir.build_dir_atomic` owns every "build aside, then rename" directory. These tests pin their life cycles:
the library path cleans up after a failure like the CLI does, and a builder killed mid-way leaves no partial
output directory (its debris is cleared by the next build).
"""

from __future__ import annotations

import ast
import json
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from bonsynth.generate import outputs
from bonsynth.generate.rundir import RunDir
from bonsynth.outdir import build_dir_atomic

PACKAGE = Path(__file__).resolve().parent.parent / "bonsynth"


@dataclass
class _Cfg:
    """The part of a GenerateConfig a run directory reads."""

    out: str
    resume: bool = False
    prompts: str = "prompts.jsonl"
    seed: int = 0

    def fingerprint(self) -> str:
        return f"fp-{self.seed}"

    def fingerprinted(self) -> dict:
        return {"seed": self.seed}


_ROWS = {outputs.CANDIDATES: [{"id": "a", "candidates": []}], outputs.SFT: [], outputs.DPO: []}


# ----------------------------------------------------------------------------------- RunDir life cycle


def test_a_new_run_that_fails_before_its_first_batch_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), RunDir.open(_Cfg(str(out))) as run:
        assert (out / outputs.STATE).exists() and run.fresh
        raise RuntimeError("model failed to load")
    assert not out.exists()

    own = tmp_path / "mine"  # the user's own empty directory stays, emptied of what the run wrote
    own.mkdir()
    with pytest.raises(RuntimeError), RunDir.open(_Cfg(str(own))):
        raise RuntimeError("boom")
    assert own.is_dir() and [p.name for p in own.iterdir()] == [".lock"]


def test_a_resumable_run_keeps_its_durable_batches_and_resumes_them(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), RunDir.open(_Cfg(str(out))) as run:
        run.writer().append_batch(_ROWS, 1)
        raise RuntimeError("killed after one batch")
    assert json.loads((out / outputs.STATE).read_text())["prompts_done"] == 1
    with RunDir.open(_Cfg(str(out), resume=True)) as run:
        assert not run.fresh and run.prompts_done == 1 and not run.complete
        run.finish({"bonsynth_manifest": 1})
    state = json.loads((out / outputs.STATE).read_text())
    assert state["complete"] and (out / outputs.MANIFEST).exists()


def test_a_run_that_cannot_be_resumed_leaves_nothing_on_any_failure_before_its_finish(tmp_path):
    out = tmp_path / "lib"
    with pytest.raises(RuntimeError), RunDir.open(_Cfg(str(out)), resumable=False) as run:
        run.writer().append_batch(_ROWS, 1)
        raise RuntimeError("manifest failed")
    assert not out.exists()


def test_resume_checks_the_fingerprint(tmp_path):
    from bonsynth.errors import ConfigError

    out = tmp_path / "run"
    with RunDir.open(_Cfg(str(out))) as run:
        run.finish({})
    with pytest.raises(ConfigError, match="pass --resume"), RunDir.open(_Cfg(str(out))):
        pass
    with pytest.raises(ConfigError, match="differs in: seed"), RunDir.open(_Cfg(str(out), resume=True, seed=1)):
        pass
    assert json.loads((out / outputs.STATE).read_text())["complete"]  # a refused resume touches nothing


# ----------------------------------------------------------------------------------- BestOfN.write


def test_best_of_n_write_cleans_up_after_a_failure_like_the_cli(tmp_path, tiny_policy_dir, tiny_rm_dir, monkeypatch):
    """Before: a failure after the batch was written left a half run (no manifest) that blocked the next write."""
    from bonsynth import BestOfN
    from bonsynth.generate import api

    real = api.build_manifest

    def broken(*a, **kw):
        raise RuntimeError("cannot describe the engine")

    with BestOfN(policy=str(tiny_policy_dir), reward=str(tiny_rm_dir), n=2, backend="hf", max_new_tokens=4,
                 seed=1, device="cpu") as bon:
        list(bon.run(["Hello there.", "Tell me a joke."]))
        monkeypatch.setattr(api, "build_manifest", broken)
        with pytest.raises(RuntimeError, match="describe"):
            bon.write(tmp_path / "new")
        assert not (tmp_path / "new").exists()
        own = tmp_path / "own"
        own.mkdir()
        with pytest.raises(RuntimeError, match="describe"):
            bon.write(own)
        assert [p.name for p in own.iterdir()] == [".lock"]
        monkeypatch.setattr(api, "build_manifest", real)
        manifest = bon.write(tmp_path / "new")  # nothing was left in the way
    assert manifest["counts"]["prompts"] == 2
    assert json.loads((tmp_path / "new" / outputs.STATE).read_text())["complete"]


# ----------------------------------------------------------------------------------- atomic builders

_BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from bonsynth.outdir import build_dir_atomic
    with build_dir_atomic(Path(sys.argv[1]), overwrite=True) as tmp:
        (tmp / "config.json").write_text("{}")
        print(tmp, flush=True)
        time.sleep(60)
""")


def _start_builder(out: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", _BUILDER, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, "the builder did not start"
    return proc, Path(line)


def test_a_builder_killed_mid_way_leaves_no_output_and_the_next_build_clears_its_debris(tmp_path):
    out = tmp_path / "model"
    proc, tmp = _start_builder(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and tmp.is_dir()  # only the hidden temp directory, never a partial OUT
    with build_dir_atomic(out) as work:
        (work / "config.json").write_text("{}")
    assert not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_build_still_running_is_never_cleared_by_another(tmp_path):
    out = tmp_path / "model"
    proc, tmp = _start_builder(out)
    try:
        with build_dir_atomic(tmp_path / "model", overwrite=True) as work:
            (work / "x").write_text("1")
        assert tmp.is_dir()  # the live build's directory was left alone
    finally:
        proc.kill()
        proc.wait()


def test_an_exception_mid_build_leaves_the_old_output_as_it_was(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(RuntimeError), build_dir_atomic(out, overwrite=True) as work:
        (work / "new").write_text("new")
        raise RuntimeError("trainer failed")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (out / "old").read_text() == "old"


def test_the_rm_update_failing_mid_training_leaves_no_rm_dir(tmp_path, monkeypatch):
    from bonsynth.loop import rm_update
    from bonsynth.loop.recipe import RMUpdateSection
    from bonsynth.rm import train

    def half_trained(cfg):
        (Path(cfg.out) / "config.json").write_text("{}")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(rm_update, "relabel_pairs", lambda *a, **kw: {"num_pairs": 5})
    monkeypatch.setattr(train, "train_reward_model", half_trained)
    round_dir = tmp_path / "round_000"
    round_dir.mkdir()
    with pytest.raises(RuntimeError, match="out of memory"):
        rm_update.update_reward_model(round_dir / "generate", "rm-in", "labeler", round_dir / "rm",
                                      RMUpdateSection(labeler="labeler"), seed=0)
    assert sorted(p.name for p in round_dir.iterdir()) == []


def _functions_using_build_dir_atomic(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.withitem) and isinstance(node.context_expr, ast.Call):
                    func = node.context_expr.func
                    if isinstance(func, ast.Name) and func.id == "build_dir_atomic":
                        found.add(fn.name)
    return found


@pytest.mark.parametrize("module, function", [
    ("merge/engine.py", "merge_config"),
    ("rm/train.py", "train_reward_model"),
    ("generate/gather.py", "gather"),
    ("loop/train_policy.py", "train_policy"),
    ("loop/rm_update.py", "update_reward_model"),
    ("demo/quickstart.py", "build_demo_models"),
    ("demo/quickstart.py", "build_quickstart_rm"),
])
def test_every_directory_builder_uses_the_one_atomic_helper(module, function):
    assert function in _functions_using_build_dir_atomic(PACKAGE / module)


def test_no_module_hand_writes_a_temp_directory_rename():
    """`build_dir_atomic` is the only place that makes a temp directory to rename into place."""
    hidden_partial = re.compile(r'with_name\("\." \+ \w+\.name \+ "\.partial"\)')  # the loop's old hand-written one
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "outdir.py":
            continue
        text = path.read_text(encoding="utf-8")
        if "mkdtemp(" in text or hidden_partial.search(text):
            offenders.append(str(path.relative_to(PACKAGE)))
    assert not offenders
