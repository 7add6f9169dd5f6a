"""`generate --engine ray`: a 2-CPU local Ray cluster writes exactly what the local run writes, and resumes.

The Ray tests are marked `ray` and `slow` and skip when Ray is not installed (`pip install "bonsynth[ray]"`).
"""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from bonsynth.errors import BonsynthError, ConfigError
from bonsynth.generate.pipeline import GenerateConfig, run_generate
from bonsynth.generate.ray_engine import import_ray, plan_resources
from tests.conftest import corpus, write_jsonl

FILES = ("candidates.jsonl", "sft.jsonl", "dpo.jsonl")
SETTINGS = dict(n=3, backend="hf", max_new_tokens=8, seed=11, batch_size=4, device="cpu", show_progress=False,
                select="pairs")


def _cfg(policy, rm, prompts, out, **kw) -> GenerateConfig:
    base = dict(policy=str(policy), rewards=[str(rm)], prompts=str(prompts), out=str(out), **SETTINGS)
    base.update(kw)
    return GenerateConfig(**base)


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_policy_dir, tiny_rm_dir):
    """The local run every Ray run must equal: 16 prompts in 4 batches of 4, N=3.

    It runs torch with one intra-op thread, as each Ray replica does here: CPU kernels sum in a different
    order with another thread count, which moves a reward in its last float bits (~1e-8). With the same
    threads the outputs are equal byte for byte, and that is what the tests check.
    """
    import torch

    root = tmp_path_factory.mktemp("ray-ref")
    prompts = write_jsonl(root / "p.jsonl", [{"id": f"y{i}", "prompt": t} for i, t in enumerate(corpus(16, seed=8))])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        manifest = run_generate(_cfg(tiny_policy_dir, tiny_rm_dir, prompts, root / "local"))
    finally:
        torch.set_num_threads(threads)
    return prompts, root / "local", manifest


def test_plan_resources_fits_the_cluster_or_says_why():
    plan = plan_resources({"CPU": 2.0}, workers=2, gpus_per_worker=0)
    assert plan.rm_gpus == 0 and 3 * plan.cpus_per_actor + 0.25 <= 2.0  # 2 policy + 1 RM replica + selection
    plan = plan_resources({"CPU": 64.0, "GPU": 8.0}, workers=7, gpus_per_worker=1)
    assert (plan.cpus_per_actor, plan.rm_gpus) == (1.0, 1.0)
    assert plan_resources({"CPU": 16.0, "GPU": 8.0}, workers=3, gpus_per_worker=2).rm_gpus == 1.0
    with pytest.raises(ConfigError, match="need 9 GPUs; the Ray cluster has 8"):
        plan_resources({"CPU": 64.0, "GPU": 8.0}, workers=8, gpus_per_worker=1)
    with pytest.raises(ConfigError, match="--workers must be >= 1"):
        plan_resources({"CPU": 4.0}, workers=0, gpus_per_worker=0)


def test_missing_ray_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(BonsynthError, match=r'pip install "bonsynth\[ray\]"'):
        import_ray()


def test_ray_flags_need_engine_ray(tmp_path):
    from bonsynth.cli import cli

    result = CliRunner().invoke(cli, ["generate", "--policy", "p", "--reward", "r", "--prompts", "x.jsonl",
                                      "--out", str(tmp_path / "o"), "--workers", "2", "--address", "auto"])
    assert isinstance(result.exception, ConfigError)
    assert "--workers, --address only apply with --engine ray" in str(result.exception)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_run_equals_local_run(tmp_path, ray_cluster, tiny_policy_dir, tiny_rm_dir, reference):
    from bonsynth.generate.ray_engine import run_generate_ray

    prompts, local, local_manifest = reference
    manifest = run_generate_ray(_cfg(tiny_policy_dir, tiny_rm_dir, prompts, tmp_path / "ray"), workers=2)
    # Same batches generated with per-prompt seeds and scored as the same RM batches: identical bytes, so
    # identical texts, selections and rewards (not merely close).
    for name in FILES:
        assert (tmp_path / "ray" / name).read_bytes() == (local / name).read_bytes(), name
    assert len(_rows(tmp_path / "ray" / "candidates.jsonl")) == 16
    assert manifest["counts"] == local_manifest["counts"]
    assert manifest["summary"] == local_manifest["summary"]
    assert manifest["backend"] == local_manifest["backend"]
    assert manifest["models"] == local_manifest["models"]
    assert manifest["engine"]["name"] == "ray" and manifest["engine"]["workers"] == 2
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text()) == manifest


@pytest.mark.ray
@pytest.mark.slow
def test_interrupted_ray_run_resumes_to_the_same_outputs(tmp_path, ray_cluster, tiny_policy_dir, tiny_rm_dir, reference):
    from bonsynth.cli import cli
    from bonsynth.generate.ray_engine import run_generate_ray

    prompts, local, _ = reference
    out = tmp_path / "ray"

    def stop_after_two_batches(done: int, total: int) -> None:
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_generate_ray(_cfg(tiny_policy_dir, tiny_rm_dir, prompts, out), workers=2, on_batch=stop_after_two_batches)
    state = json.loads((out / "state.json").read_text())
    assert state["prompts_done"] == 8 and not state["complete"]
    assert [r["id"] for r in _rows(out / "candidates.jsonl")] == [f"y{i}" for i in range(8)]
    assert not (out / "manifest.json").exists()

    # Resume through the CLI (in process, so it joins this test's Ray cluster): the remaining blocks only.
    args = ["generate", "--policy", str(tiny_policy_dir), "--reward", str(tiny_rm_dir), "--prompts", str(prompts),
            "--out", str(out), "--n", "3", "--backend", "hf", "--max-new-tokens", "8", "--seed", "11",
            "--batch-size", "4", "--device", "cpu", "--select", "pairs", "--quiet", "--resume",
            "--engine", "ray", "--workers", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (result.output, result.exception)
    for name in FILES:
        assert (out / name).read_bytes() == (local / name).read_bytes(), name
    assert json.loads((out / "state.json").read_text())["complete"]
