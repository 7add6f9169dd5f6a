"""`bonsynth quickstart` end to end: builds the demo models from data/, runs best-of-N, prints the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    env = dict(os.environ, BONSYNTH_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    out = tmp_path / "qs"
    r = subprocess.run([sys.executable, "-m", "bonsynth", "quickstart", "--out", str(out), "--limit", "64"],
                       capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    s = manifest["summary"]
    assert s["bon_gain"] == pytest.approx(s["mean_reward_selected"] - s["mean_reward_all"])
    assert s["bon_gain"] > 0
    assert manifest["counts"]["prompts"] == 64 and manifest["counts"]["candidates"] == 64 * 8
    for line in ("prompts", "mean reward, all candidates", "mean reward, selected", "best-of-N gain", "sft.jsonl"):
        assert line in r.stdout
    # The demo RM is a real bonsynth RM: it prefers the in-character replies of held-out sample pairs.
    rm_dirs = list((tmp_path / "cache").glob("demo-*/rm"))
    assert len(rm_dirs) == 1 and (rm_dirs[0] / "bonsynth_rm.json").exists()

    # Second run: cached models, and the previous run in OUT is replaced.
    r2 = subprocess.run([sys.executable, "-m", "bonsynth", "quickstart", "--out", str(out), "--limit", "8"],
                        capture_output=True, text=True, env=env, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "using cached demo models" in r2.stderr
    assert json.loads((out / "manifest.json").read_text())["counts"]["prompts"] == 8
