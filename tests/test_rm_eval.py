"""`rm eval`: every number equals an independent recomputation (HF model called directly, one text at a time,
metrics from sklearn or plain python); one result per file; `--json` prints one object per file."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
metrics = pytest.importorskip("sklearn.metrics")

from bonsynth.errors import InputError  # noqa: E402
from bonsynth.rm.evaluate import evaluate_files, ndcg, pairwise_metrics, roc_auc  # noqa: E402
from bonsynth.rm.meta import RMMeta  # noqa: E402

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads cost more than they save


def words(rng: random.Random, lo: int = 2, hi: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rmeval")


@pytest.fixture(scope="module")
def tokenizer():
    from bonsynth.demo.models import train_tokenizer

    rng = random.Random(0)
    return train_tokenizer([f"Question {i}: {words(rng)}." for i in range(60)], vocab_size=300)


@pytest.fixture(scope="module")
def rm_dirs(workdir, tokenizer) -> dict[int, Path]:
    """Untrained (random-head) RMs: evaluation must be exact whatever the weights are."""
    from bonsynth.demo.models import save_model, tiny_reward_model

    out = {}
    for num_labels, objective in ((1, "pairwise"), (2, "binary")):
        d = save_model(tiny_reward_model(tokenizer, num_labels=num_labels, seed=num_labels), tokenizer, workdir / f"rm{num_labels}")
        RMMeta(objective=objective, num_labels=num_labels, max_length=128).save(d)
        out[num_labels] = d
    return out


@pytest.fixture(scope="module")
def files(workdir) -> dict[str, Path]:
    rng = random.Random(1)
    rows = {
        "pairwise": [
            {"prompt": f"Question {i}: {words(rng)}.", "chosen": " " + words(rng), "rejected": " " + words(rng), "margin": rng.choice([0.0, 0.5])}
            for i in range(30)
        ],
        "binary": [{"prompt": f"Question {i}: {words(rng)}.", "response": " " + words(rng), "label": rng.randint(0, 1)} for i in range(40)],
        "ranked": [
            {
                "id": f"g{i}",
                "prompt": f"Question {i}: {words(rng)}.",
                "responses": [" " + words(rng) for _ in range(4)],
                "scores": [rng.choice([1, 2, 3, 5]) for _ in range(4)],
            }
            for i in range(12)
        ],
    }
    out = {}
    for kind, rs in rows.items():
        path = workdir / f"{kind}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rs))
        out[kind] = path
    return out


def direct_rewards(model_dir: Path, texts: list[str]) -> list[float]:
    """The reference: the HF classifier on one text at a time (no padding), reward by bonsynth's convention."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            logits = model(**tok(text, return_tensors="pt")).logits[0]
            out.append(float(logits[0]) if logits.numel() == 1 else float(logits[1] - logits[0]))
    return out


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pairwise_numbers_match_recomputation(rm_dirs, files):
    (res,) = evaluate_files(str(rm_dirs[1]), [str(files["pairwise"])])
    rows = rows_of(files["pairwise"])
    chosen = direct_rewards(rm_dirs[1], [r["prompt"] + r["chosen"] for r in rows])
    rejected = direct_rewards(rm_dirs[1], [r["prompt"] + r["rejected"] for r in rows])
    diff = [c - r for c, r in zip(chosen, rejected, strict=True)]
    assert res["file"] == str(files["pairwise"]) and res["kind"] == "pairwise" and res["num_examples"] == 30
    assert res["accuracy"] == pytest.approx(sum(d > 0 for d in diff) / len(diff))
    want_loss = -torch.nn.functional.logsigmoid(torch.tensor(diff) - torch.tensor([r["margin"] for r in rows])).mean()
    assert res["loss"] == pytest.approx(float(want_loss), abs=1e-4)
    assert res["chosen_rewards"] == pytest.approx(sum(chosen) / len(chosen), abs=1e-4)
    assert res["rejected_rewards"] == pytest.approx(sum(rejected) / len(rejected), abs=1e-4)
    assert res["reward_margin"] == pytest.approx(sum(diff) / len(diff), abs=1e-4)


def test_binary_numbers_match_sklearn(rm_dirs, files):
    (res,) = evaluate_files(str(rm_dirs[2]), [str(files["binary"])])
    rows = rows_of(files["binary"])
    labels = [r["label"] for r in rows]
    rewards = direct_rewards(rm_dirs[2], [r["prompt"] + r["response"] for r in rows])
    p_good = [1 / (1 + math.exp(-x)) for x in rewards]  # = softmax(logits)[1]
    assert res["kind"] == "binary" and res["num_examples"] == 40
    assert res["auc"] == pytest.approx(metrics.roc_auc_score(labels, rewards), abs=1e-6)
    assert res["accuracy"] == pytest.approx(metrics.accuracy_score(labels, [int(p >= 0.5) for p in p_good]))
    assert res["loss"] == pytest.approx(metrics.log_loss(labels, p_good), abs=1e-4)
    pos = [x for x, y in zip(rewards, labels, strict=True) if y == 1]
    assert res["positive_rewards"] == pytest.approx(sum(pos) / len(pos), abs=1e-4)


@pytest.mark.parametrize("k", [None, 2])
def test_ranked_numbers_match_sklearn(rm_dirs, files, k):
    (res,) = evaluate_files(str(rm_dirs[1]), [str(files["ranked"])], ndcg_k=k)
    rows = rows_of(files["ranked"])
    values, correct, total = [], 0, 0
    for r in rows:
        pred = direct_rewards(rm_dirs[1], [r["prompt"] + x for x in r["responses"]])
        gains = [s - min(r["scores"]) for s in r["scores"]]
        if max(gains) > 0:
            values.append(metrics.ndcg_score([gains], [pred], k=k))
        for i in range(4):
            for j in range(4):
                if r["scores"][i] > r["scores"][j]:
                    total += 1
                    correct += pred[i] > pred[j]
    assert res["kind"] == "ranked" and res["num_examples"] == 12
    assert res["ndcg"] == pytest.approx(sum(values) / len(values), abs=1e-5)
    assert res["ndcg_k"] == k and res["num_groups_ranked"] == len(values)
    assert res["num_pairs"] == total
    assert res["accuracy"] == pytest.approx(correct / total)


def test_one_result_per_file_and_json_cli(rm_dirs, files, monkeypatch, capsys):
    from bonsynth.cli import main

    paths = [str(files["pairwise"]), str(files["binary"]), str(files["ranked"])]
    results = evaluate_files(str(rm_dirs[1]), paths)
    assert [r["file"] for r in results] == paths
    assert [r["kind"] for r in results] == ["pairwise", "binary", "ranked"]

    argv = ["bonsynth", "rm", "eval", "--model", str(rm_dirs[1]), "--json"]
    for p in paths:
        argv += ["--data", p]
    monkeypatch.setattr(sys, "argv", argv)
    main()  # returns normally on success (errors exit 2)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 3
    assert lines[0]["accuracy"] == pytest.approx(results[0]["accuracy"])
    assert all("accuracy" in obj for obj in lines)


def test_eval_bad_input(rm_dirs, files, workdir, monkeypatch, capsys):
    from bonsynth.cli import main

    prompts = workdir / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    with pytest.raises(InputError, match="prompts only"):
        evaluate_files(str(rm_dirs[1]), [str(prompts)])
    for args, needle in (
        (["--model", str(workdir / "missing"), "--data", str(files["pairwise"])], "not found"),
        (["--model", str(rm_dirs[1]), "--data", str(workdir / "nope.jsonl")], "does not exist"),
    ):
        monkeypatch.setattr(sys, "argv", ["bonsynth", "rm", "eval", *args])
        with pytest.raises(SystemExit) as exc:
            main()
        err = capsys.readouterr().err
        assert exc.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_metric_functions_against_references():
    rng = random.Random(3)
    scores = [rng.choice([0.1, 0.5, 0.9, 1.3]) for _ in range(50)]  # with ties
    labels = [rng.randint(0, 1) for _ in range(50)]
    assert roc_auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores))
    assert roc_auc([1.0, 2.0], [1, 1]) is None
    true, pred = [3.0, 1.0, 2.0, 0.0, 5.0], [0.2, 0.9, 0.1, -1.0, 0.5]
    for k in (None, 1, 3):
        assert ndcg(true, pred, k) == pytest.approx(metrics.ndcg_score([true], [pred], k=k))
    assert ndcg([1.0, 1.0], [0.3, 0.1]) is None
    m = pairwise_metrics([2.0, 0.0], [1.0, 1.0])
    assert m["accuracy"] == 0.5 and m["reward_margin"] == 0.0
    assert m["loss"] == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2)
