"""`score_file` / `bonsynth rm score`: every row kind gets its rewards, every input field survives, and bad
input or a missing model is one clear error (exit 2) with no output file left behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from bonsynth.demo.models import save_model, tiny_reward_model, train_tokenizer  # noqa: E402
from bonsynth.errors import InputError  # noqa: E402
from bonsynth.rm.meta import RMMeta  # noqa: E402
from bonsynth.rm.model import RewardModel  # noqa: E402
from bonsynth.rm.score_file import score_file  # noqa: E402

CORPUS = [
    "Human: How do I bake bread? Assistant: Mix flour, water, salt and yeast, then knead and bake it.",
    "Human: What is the capital of France? Assistant: Paris is the capital of France.",
] * 10
CHAT = [{"role": "user", "content": "Capital of France?"}]

ROWS = {
    "prompt_response": [
        {"prompt": "Capital of France?", "response": " Paris.", "meta": {"src": "a"}},
        {"prompt": "Bake bread?", "response": " Knead and bake it.", "label": 1, "extra": None},
    ],
    "messages_completion": [
        {"prompt": CHAT, "completion": "Paris.", "id": 7},
        {"prompt": CHAT, "completion": [{"role": "assistant", "content": "Lyon."}], "id": 8},
    ],
    "text": [{"text": "Human: Hi Assistant: Hello!", "source": "x"}, {"text": "Paris is nice.", "label": 0}],
    "input_text": [{"input_text": "User: hi\nBot: hello", "labels": 1}, {"input_text": "User: hi\nBot: go away"}],
    "pairwise": [
        {"prompt": "Capital of France?", "chosen": " Paris.", "rejected": " Berlin.", "margin": 1.0},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."},
    ],
    "ranked": [
        {"prompt": "Capital of France?", "responses": [" Paris.", " Lyon.", " Berlin."], "scores": [3, 2, 1]},
        {"prompt": "Capital of France?", "responses": [" Paris", " Rome"]},
    ],
    "candidates": [
        {"id": "p1", "prompt": "Bake bread?", "candidates": [{"text": " Knead.", "finish_reason": "stop"}, {"text": " No."}]},
        {"id": "p2", "prompt": CHAT, "candidates": [{"text": "Paris.", "reward": 99.0}]},
    ],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads cost more than they save


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory) -> Path:
    tok = train_tokenizer(CORPUS, vocab_size=300)
    out = save_model(tiny_reward_model(tok, num_labels=1, seed=1), tok, tmp_path_factory.mktemp("rm") / "rm")
    RMMeta(objective="pairwise", max_length=128).save(out)
    return out


@pytest.fixture(scope="module")
def rm(rm_dir) -> RewardModel:
    return RewardModel.load(rm_dir)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_score_file_each_kind(rm, tmp_path, kind):
    rows = ROWS[kind]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out" / "scored.jsonl"
    assert score_file(rm, src, out) == len(rows)
    got = read_jsonl(out)
    for before, after in zip(rows, got, strict=True):
        for key, value in before.items():
            if key != "candidates":
                assert after[key] == value
    if kind == "pairwise":
        p = rm.score([("Capital of France?", " Paris."), ("Capital of France?", " Berlin.")])
        assert [got[0]["reward_chosen"], got[0]["reward_rejected"]] == pytest.approx(p, abs=1e-6)
        assert got[0]["reward_margin"] == pytest.approx(p[0] - p[1], abs=1e-6)
        h = rm.score([("\n\nHuman: Hi\n\nAssistant:", " Hello!")])
        assert got[1]["reward_chosen"] == pytest.approx(h[0], abs=1e-6)
    elif kind == "ranked":
        assert [len(r["rewards"]) for r in got] == [3, 2]
        assert got[1]["rewards"] == pytest.approx(rm.score([("Capital of France?", " Paris"), ("Capital of France?", " Rome")]), abs=1e-6)
        assert "scores" not in got[1]  # placeholders for validation never reach the output
    elif kind == "candidates":
        assert got[0]["candidates"][0]["finish_reason"] == "stop"
        assert [c["reward"] for c in got[0]["candidates"]] == pytest.approx(rm.score([("Bake bread?", " Knead."), ("Bake bread?", " No.")]), abs=1e-6)
        assert got[1]["candidates"][0]["reward"] == pytest.approx(rm.score([(CHAT, "Paris.")])[0], abs=1e-6)
    else:
        assert all(isinstance(r["reward"], float) for r in got)
        if kind == "prompt_response":
            assert "label" not in got[0]
            assert got[0]["reward"] == pytest.approx(rm.score([("Capital of France?", " Paris.")])[0], abs=1e-6)
        if kind in ("text", "input_text"):
            key = "text" if kind == "text" else "input_text"
            assert [r["reward"] for r in got] == pytest.approx(rm.score([r[key] for r in rows]), abs=1e-6)


def test_output_loads_with_datasets_and_from_a_path(rm_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    src = write_jsonl(tmp_path / "in.jsonl", ROWS["pairwise"] + [])
    out = tmp_path / "scored.jsonl"
    assert score_file(str(rm_dir), src, out, device="cpu", show_progress=False) == 2
    ds = datasets.load_dataset("json", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 2 and {"reward_chosen", "reward_rejected", "reward_margin", "chosen"} <= set(ds.column_names)


def test_bad_rows_name_the_line_and_leave_no_output(rm, tmp_path):
    out = tmp_path / "scored.jsonl"
    bad = write_jsonl(tmp_path / "bad.jsonl", [ROWS["prompt_response"][0], {"prompt": "only a prompt"}])
    with pytest.raises(InputError, match=r"bad\.jsonl:2: field 'response': nothing to score"):
        score_file(rm, bad, out)
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [ROWS["text"][0], ROWS["pairwise"][0]])
    with pytest.raises(InputError, match=r"mixed\.jsonl:2: .*all rows of a file must be the same kind"):
        score_file(rm, mixed, out)
    cands = write_jsonl(tmp_path / "cands.jsonl", [{"prompt": "p", "candidates": [{"text": "a"}, {"txt": "b"}]}])
    with pytest.raises(InputError, match=r"cands\.jsonl:1: field 'candidates\[1\]\.text'"):
        score_file(rm, cands, out)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [ROWS["pairwise"][0], {"prompt": "p", "chosen": " a", "rejected": 3}])
    with pytest.raises(InputError, match=r"pairs\.jsonl:2: field 'rejected'"):
        score_file(rm, pairs, out)
    assert list(tmp_path.glob("*scored*")) == []  # nothing half-written, no temp file


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from bonsynth.cli.common import run_guarded
    from bonsynth.cli.rm import rm as rm_group

    monkeypatch.setattr(sys, "argv", ["bonsynth-rm", *args])
    with pytest.raises(SystemExit) as exc:
        run_guarded(rm_group)
        raise SystemExit(0)
    return exc.value.code, capsys.readouterr().err


def test_cli_exit_codes(rm_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "scored.jsonl"
    good = write_jsonl(tmp_path / "good.jsonl", ROWS["candidates"])
    code, _ = run_cli(monkeypatch, capsys, "score", "--model", str(rm_dir), "--input", str(good), "--output", str(out))
    assert code == 0 and len(read_jsonl(out)) == 2
    out.unlink()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "response": 5}])
    code, err = run_cli(monkeypatch, capsys, "score", "--model", str(rm_dir), "--input", str(bad), "--output", str(out))
    assert code == 2 and "bad.jsonl:1" in err and "'response'" in err and not out.exists()
    missing = tmp_path / "no-such-model"
    code, err = run_cli(monkeypatch, capsys, "score", "--model", str(missing), "--input", str(good), "--output", str(out))
    assert code == 2 and f"model not found: {missing}" in err and not out.exists()
    code, err = run_cli(monkeypatch, capsys, "score", "--model", str(rm_dir), "--input", str(tmp_path / "nope.jsonl"), "--output", str(out))
    assert code == 2 and "nope.jsonl" in err and not out.exists()
