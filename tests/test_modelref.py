"""One model reference: one Hub-id rule for every loader, and a frozen `ModelRef` parsed once (issue 14, point 5)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bonsynth.errors import BonsynthError, ConfigError
from bonsynth.modelref import ModelRef, is_hub_id

ROOT = Path(__file__).resolve().parent.parent

HUB = ["gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "org/model.v1", "a_b/c-d"]
NOT_HUB = ["./model", "/abs/model", "~/model", "a/b/c", "-bad", "org/", "with space", "win\\path", "org/name@main",
           ""]


@pytest.mark.parametrize("ref", HUB)
def test_hub_ids(ref):
    assert is_hub_id(ref) and is_hub_id(ref, revision=True)


@pytest.mark.parametrize("ref", NOT_HUB)
def test_not_hub_ids(ref):
    assert not is_hub_id(ref)


def test_revisions_only_where_the_caller_takes_them():
    assert is_hub_id("org/name@main", revision=True) and is_hub_id("org/name@refs/pr/1", revision=True)
    assert not is_hub_id("org/name@", revision=True)


def test_owner_that_is_a_local_directory_means_a_missing_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("runs/rm")
    (tmp_path / "runs").mkdir()
    assert not is_hub_id("runs/rm") and not is_hub_id("runs/rm@main", revision=True)


def test_every_loader_reads_a_reference_the_same_way(tmp_path, monkeypatch):
    """`runs/rm` with a local `runs/` is a missing path for the model checks, merge, the RM loader and the
    readers alike (before, the model check took it for a hub id while the others called it missing)."""
    from bonsynth.data.readers import _looks_like_hub_name
    from bonsynth.merge.io import resolve_model_dir
    from bonsynth.models import check_model_source

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "runs").mkdir()
    with pytest.raises(BonsynthError, match="^policy not found: runs/rm$"):
        check_model_source("runs/rm", what="policy")
    with pytest.raises(ConfigError, match="no such directory"):
        resolve_model_dir("runs/rm")
    assert not _looks_like_hub_name("runs/rm")
    # and a hub id is one for all of them (merge stops only because the Hub is off)
    assert check_model_source("org/rm") == "org/rm"
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        resolve_model_dir("org/rm")
    assert _looks_like_hub_name("org/rm")


def test_one_hub_id_pattern_in_the_source():
    """No module keeps its own copy of the hub-id regex (there were four, in three variants)."""
    copies = [str(p.relative_to(ROOT)) for p in (ROOT / "bonsynth").rglob("*.py")
              if "[A-Za-z0-9][\\w.-]*" in p.read_text(encoding="utf-8") and p.name != "modelref.py"]
    assert copies == []


def test_model_ref_parses_a_local_directory_once(tiny_rm_dir):
    ref = ModelRef.parse(str(tiny_rm_dir), what="reward model")
    assert ref == ModelRef(str(tiny_rm_dir), str(tiny_rm_dir), True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.location = "elsewhere"  # type: ignore[misc]
    assert ModelRef.parse("org/rm") == ModelRef("org/rm", "org/rm", False)


def test_model_ref_refuses_what_cannot_be_a_model(tmp_path, tiny_rm_dir):
    f = tmp_path / "file"
    f.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((Path(tiny_rm_dir) / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not really")
    cases = [(str(f), "^reward model path is not a directory: "), (str(empty), "^reward model directory has no config"),
             (str(tmp_path / "missing"), "^reward model not found: "), ("./nope", "^reward model not found: ./nope$"),
             (str(pickled), "only pickle weights .*--allow-unsafe-weights")]
    for ref, message in cases:
        with pytest.raises(BonsynthError, match=message):
            ModelRef.parse(ref, what="reward model")
    assert ModelRef.parse(str(pickled), allow_unsafe_weights=True).local


def test_model_ref_resolves_demo_names_through_the_one_resolver(monkeypatch, tmp_path):
    import bonsynth.modelref as modelref

    monkeypatch.setattr(modelref, "_demo_models_dir", lambda build: tmp_path)
    with pytest.raises(BonsynthError, match=f"^policy not found: {tmp_path / 'policy'}$"):
        ModelRef.parse("demo:policy", what="policy", build_demo=False)
    with pytest.raises(ConfigError, match="unknown demo name 'demo:nope'"):
        ModelRef.parse("demo:nope")
