"""`rm train`'s TRL-style options and WARM (issue 18): each option changes what it claims, checked against a
direct computation; the WARM average equals the linear average of its members."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import run_bonsynth, write_jsonl  # noqa: E402
from test_rm_train import make_rows  # noqa: E402

from bonsynth.errors import ConfigError  # noqa: E402
from bonsynth.rm.meta import RMMeta  # noqa: E402
from bonsynth.rm.train import BestCheckpoint, RMTrainConfig, split_records, train_reward_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rmopts")


@pytest.fixture(scope="module")
def base(work) -> Path:
    from test_rm_train import FILLER, MARKER

    from bonsynth.demo.models import save_model, tiny_causal_lm, train_tokenizer

    texts = [f"Question {i}: say something about {' '.join(FILLER)} {MARKER}. Some context." for i in range(50)]
    tok = train_tokenizer(texts, vocab_size=320)
    return save_model(tiny_causal_lm(tok, seed=0), tok, work / "base")


@pytest.fixture(scope="module")
def pairs(work) -> Path:
    return write_jsonl(work / "pairs.jsonl", make_rows("pairwise", 96, seed=1))


def cfg(base: Path, data: Path, out: Path, **kw) -> RMTrainConfig:
    opts = dict(objective="pairwise", epochs=2, lr=2e-3, batch_size=16, eval_split=0.25, seed=0, disable_tqdm=True,
                logging_steps=1000)
    opts.update(kw)
    return RMTrainConfig(base=str(base), data=[str(data)], out=out, **opts)


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def eval_accuracy(model_dir: Path, data: Path, eval_split: float, split_seed: int) -> float:
    """Accuracy on the run's eval split, recomputed from the saved model (not read from the summary)."""
    from bonsynth.data.readers import load_records
    from bonsynth.rm.model import RewardModel

    _, held = split_records(load_records(data).records, eval_split, split_seed)
    rm = RewardModel.load(model_dir, device="cpu")
    chosen = rm.score([(p.prompt, p.chosen) for p in held])
    rejected = rm.score([(p.prompt, p.rejected) for p in held])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(held)


# ------------------------------------------------------------------------------------------- WARM


@pytest.mark.parametrize("lora_r", [0, 4])
def test_warm_average_is_the_linear_average_of_its_members(base, pairs, work, lora_r):
    from bonsynth.merge.warm import train_warm

    out = work / f"warm-{lora_r}"
    kw = {"lora_r": lora_r, "lr": 1e-2} if lora_r else {}
    summary = train_warm(cfg(base, pairs, out, seeds=[0, 1, 2], keep_members=True, **kw))
    members = [out / "members" / f"seed-{s}" for s in (0, 1, 2)]
    member_w = [weights(m) for m in members]
    avg = weights(out)
    assert set(avg) == set(member_w[0])
    assert any(not torch.equal(member_w[0][k], member_w[1][k]) for k in avg)  # different data orders made different members
    for name, tensor in avg.items():
        expected = sum(w[name].double() for w in member_w) / 3
        assert torch.allclose(tensor.double(), expected, atol=1e-6, rtol=0), name
    assert not any("lora" in k for k in avg)

    meta = RMMeta.load(out)
    warm = meta.extra["warm"]
    assert warm["seeds"] == [0, 1, 2] and warm["method"] == "linear"
    split_seed = 0  # the run's --seed: every member is measured on the same records
    for member, rec in zip(members, warm["members"], strict=True):
        assert rec["eval_accuracy"] == pytest.approx(eval_accuracy(member, pairs, 0.25, split_seed))
    assert warm["average"]["accuracy"] == pytest.approx(eval_accuracy(out, pairs, 0.25, split_seed))
    assert summary["eval_accuracy"] == warm["average"]["accuracy"]
    assert meta.reward_stats_source == "train:eval"
    assert not any(p.name.startswith(".") for p in out.parent.iterdir() if p.name.startswith(f".{out.name}"))


def test_warm_from_the_cli_and_members_not_kept_by_default(base, pairs, work):
    out = work / "warm-cli"
    code, stdout, stderr = run_bonsynth(["rm", "train", "--base", str(base), "--data", str(pairs), "--objective",
                                         "pairwise", "--out", str(out), "--epochs", "1", "--lr", "2e-3",
                                         "--batch-size", "16", "--eval-split", "0.25", "--seed", "3",
                                         "--seeds", "3,4"])
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["seeds"] == [3, 4] and len(summary["members"]) == 2
    assert not (out / "members").exists()
    assert (out / "config.json").exists() and RMMeta.load(out).extra["warm"]["members_kept"] is False


# ------------------------------------------------------------------------------------------- options


def test_best_checkpoint_restores_the_best_weights():
    """A direct check of the rule: the best accuracy (ties: lower loss) is kept, and early stopping counts."""
    from types import SimpleNamespace

    model = torch.nn.Linear(2, 1)
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    model.register_parameter("frozen", frozen)
    results = iter([(0.6, 0.7), (0.8, 0.5), (0.8, 0.6), (0.7, 0.4)])
    snapshots = []

    def evaluate(m):
        snapshots.append(m.weight.detach().clone())
        acc, loss = next(results)
        return {"accuracy": acc, "loss": loss}

    cb = BestCheckpoint(evaluate, every=1, patience=2)
    control = SimpleNamespace(should_training_stop=False)
    for step in range(1, 5):
        with torch.no_grad():
            model.weight.add_(1.0)
        cb.on_step_end(None, SimpleNamespace(global_step=step, epoch=step / 4), control, model=model)
        if control.should_training_stop:
            break
    assert step == 4 and cb.stopped_early  # two evaluations after the best without a better one
    cb.on_train_end(None, SimpleNamespace(global_step=4, epoch=1.0), control, model=model)  # no re-measure
    assert len(cb.history) == 4
    cb.restore(model)
    assert torch.equal(model.weight, snapshots[1])
    assert "frozen" not in cb.best_state  # only trainable tensors are copied
    assert cb.summary()["best_step"] == 2


def test_eval_every_keeps_the_best_checkpoint_and_early_stopping_stops(base, pairs, work):
    out = work / "rm-eval-every"
    summary = train_reward_model(cfg(base, pairs, out, epochs=3, eval_every=2))
    history = summary["evaluations"]
    steps = math.ceil(72 / 16) * 3  # 72 training pairs, batch 16, 3 epochs
    assert [h["step"] for h in history] == [*range(2, steps + 1, 2), *([steps] if steps % 2 else [])]
    best = max(history, key=lambda h: (h["accuracy"], -h["loss"]))
    assert summary["best_step"] == best["step"] and summary["eval_accuracy"] == best["accuracy"]
    assert eval_accuracy(out, pairs, 0.25, 0) == pytest.approx(best["accuracy"])

    # A learning rate too small to move float32 weights: every evaluation ties, so it stops after `patience`.
    stopped = train_reward_model(cfg(base, pairs, work / "rm-early", epochs=3, lr=1e-12, eval_every=1,
                                     early_stopping=2))
    assert stopped["stopped_early"] is True
    assert [h["step"] for h in stopped["evaluations"]] == [1, 2, 3]

    by_epoch = train_reward_model(cfg(base, pairs, work / "rm-by-epoch", epochs=3, eval_every="epoch"))
    per_epoch = math.ceil(72 / 16)
    assert [h["step"] for h in by_epoch["evaluations"]] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert [h["epoch"] for h in by_epoch["evaluations"]] == [1.0, 2.0, 3.0]


def test_lr_schedule_and_warmup_follow_the_formula(base, pairs, work):
    """The scheduler the trainer builds from --lr-scheduler/--warmup-ratio, against the closed form."""
    from bonsynth.data.readers import load_records
    from bonsynth.rm.model import RewardModel
    from bonsynth.rm.train import _make_trainer, build_train_dataset, load_base_model

    c = cfg(base, pairs, work / "unused", lr=1e-3, lr_scheduler="cosine", warmup_ratio=0.25)
    model, tok, max_length = load_base_model(c)
    enc = RewardModel.from_model(model, tok, RMMeta(objective="pairwise"), max_length=max_length)
    dataset, _ = build_train_dataset("pairwise", load_records(pairs).records, enc)
    trainer = _make_trainer(c, model, tok, dataset, work / "sched", [])
    total = 20
    trainer.create_optimizer_and_scheduler(num_training_steps=total)
    warm = math.ceil(0.25 * total)
    for step in range(total):
        lr = trainer.lr_scheduler.get_last_lr()[0]
        if step < warm:
            expected = 1e-3 * step / warm
        else:
            expected = 1e-3 * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        assert lr == pytest.approx(expected, abs=1e-12), step
        trainer.optimizer.step()
        trainer.lr_scheduler.step()


def test_center_rewards_reaches_trl_and_pulls_rewards_to_zero(base, pairs, work):
    from bonsynth.data.readers import load_records
    from bonsynth.rm.model import RewardModel
    from bonsynth.rm.train import _make_trainer, build_train_dataset, load_base_model

    c = cfg(base, pairs, work / "unused", center_rewards=0.5)
    model, tok, max_length = load_base_model(c)
    records = load_records(pairs).records
    enc = RewardModel.from_model(model, tok, RMMeta(objective="pairwise"), max_length=max_length)
    dataset, _ = build_train_dataset("pairwise", records, enc)
    assert _make_trainer(c, model, tok, dataset, work / "ctr", []).args.center_rewards_coefficient == 0.5

    items = [(p.prompt, p.chosen) for p in records] + [(p.prompt, p.rejected) for p in records]

    def mean_square(out: Path) -> float:
        rewards = RewardModel.load(out, device="cpu").score(items)
        return sum(r * r for r in rewards) / len(rewards)

    plain, centred = work / "rm-plain", work / "rm-centred"
    train_reward_model(cfg(base, pairs, plain, epochs=3, lr=5e-3))
    train_reward_model(cfg(base, pairs, centred, epochs=3, lr=5e-3, center_rewards=1.0))
    assert mean_square(centred) < 0.5 * mean_square(plain)


@pytest.mark.parametrize(("args", "needle"), [
    (["--warmup-ratio", "1.5"], "--warmup-ratio"),
    (["--early-stopping", "2"], "--eval-every"),
    (["--eval-every", "5", "--eval-split", "0"], "eval split"),
    (["--eval-every", "often"], "--eval-every"),
    (["--eval-every", "-2"], "--eval-every"),
    (["--seeds", "1"], "--seeds"),
    (["--seeds", "1,1"], "--seeds"),
    (["--average", "linear"], "--seeds"),
    (["--center-rewards", "-1"], "--center-rewards"),
])
def test_bad_option_values_exit_2_with_one_line(base, pairs, work, args, needle):
    out = work / "never"
    code, _stdout, stderr = run_bonsynth(["rm", "train", "--base", str(base), "--data", str(pairs), "--objective",
                                          "pairwise", "--out", str(out), *args])
    assert code == 2, stderr
    assert needle in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists()


def test_center_rewards_is_refused_for_binary():
    with pytest.raises(ConfigError, match="binary"):
        RMTrainConfig(base="b", data=["x"], objective="binary", out="o", center_rewards=0.01)
