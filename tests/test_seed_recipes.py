"""recipes/seed-gpu-poor: the merge YAMLs parse with bonsynth's merge config parser, keep the seed's shape,
and name exactly the directories run.sh writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bonsynth.merge.config import load_config, parse_config

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "seed-gpu-poor"
YAMLS = sorted(RECIPE.glob("*.yaml"))
SEED_WEIGHTS = {"rm-thumbs": 0.5, "rm-feedback-pairs": 0.6, "rm-hh-rlhf": 0.05}


def _local(cfg: dict, root: Path) -> dict:
    """The config with every model reference pointed at a local folder under `root`."""
    def fix(ref: str) -> str:
        (root / ref).mkdir(parents=True, exist_ok=True)
        return str(root / ref)

    out = dict(cfg)
    out["models"] = [{**m, "model": fix(m["model"])} for m in cfg["models"]]
    if "base_model" in cfg:
        out["base_model"] = fix(cfg["base_model"])
    return out


def test_recipe_has_the_three_merges():
    assert {p.name for p in YAMLS} == {"rewardblend-ties.yaml", "rewardblend-linear.yaml",
                                       "rewardblend-dare-ties.yaml"}


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_parses_as_is_and_with_local_paths(path: Path, tmp_path: Path):
    cfg, _text = load_config(path)  # as shipped (relative names, not yet built)
    local = parse_config(_local(yaml.safe_load(path.read_text()), tmp_path), str(path))
    assert local.merge_method == cfg.merge_method
    weights = {Path(m.model).name: m.parameters["weight"] for m in local.models if m.parameters}
    assert weights == SEED_WEIGHTS


def test_ties_is_the_seed_rewardblend():
    cfg, _ = load_config(RECIPE / "rewardblend-ties.yaml")
    assert cfg.merge_method == "ties" and cfg.base_model == "gpt2-8l"
    densities = {m.model: m.parameters["density"] for m in cfg.models if m.parameters}
    assert densities == dict.fromkeys(SEED_WEIGHTS, 1.0)
    assert cfg.parameters["normalize"] is True


def test_dare_ties_and_linear_variants():
    dare, _ = load_config(RECIPE / "rewardblend-dare-ties.yaml")
    assert dare.merge_method == "dare_ties" and dare.base_model == "gpt2-8l"
    assert all(0 < m.parameters["density"] < 1 for m in dare.models if m.parameters)
    linear, _ = load_config(RECIPE / "rewardblend-linear.yaml")
    assert linear.merge_method == "linear" and linear.base_model is None


def test_run_sh_writes_what_the_yamls_read():
    script = (RECIPE / "run.sh").read_text()
    outs = set(re.findall(r"--out (\S+)", script))
    assert "bonsynth rm slice --base \"$BASE\" --layers \"$LAYERS\" --out gpt2-8l" in script
    assert 'LAYERS="${LAYERS:-0:8}"' in script and 'BASE="${BASE:-gpt2}"' in script
    for path in YAMLS:
        cfg, _ = load_config(path)
        assert set(cfg.referenced_models()) <= outs, path.name
    for yml in ("rewardblend-ties.yaml", "rewardblend-linear.yaml", "rewardblend-dare-ties.yaml"):
        assert f'bonsynth merge "$HERE/{yml}"' in script
    assert "--objective binary --out rm-thumbs" in script
    assert script.count("--objective pairwise") == 2 and "--out rm-hh-rlhf --skip-invalid" in script
