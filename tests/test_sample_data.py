"""The committed sample data in data/: formats, counts, uniqueness, and byte-exact regeneration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
FILES = ["prompts.jsonl", "pairs.jsonl", "feedback.jsonl", "ranked.jsonl"]
MIN_ROWS = {"prompts.jsonl": 240, "pairs.jsonl": 600, "feedback.jsonl": 600, "ranked.jsonl": 120}


def load(name: str) -> list[dict[str, Any]]:
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def prompt_key(messages: list[dict[str, str]]) -> tuple[str, str]:
    """(card, user turn) of a [system, user] prompt, checking its shape."""
    assert [m["role"] for m in messages] == ["system", "user"]
    assert all(set(m) == {"role", "content"} and m["content"].strip() for m in messages)
    return messages[0]["content"], messages[1]["content"]


def feedback_key(text: str) -> tuple[str, str, str]:
    """(card, user turn, reply) parsed back from bonsynth's plain chat rendering."""
    assert text.startswith("\n\nSystem: ")
    card, rest = text[len("\n\nSystem: ") :].split("\n\nHuman: ")
    user, reply = rest.split("\n\nAssistant: ")
    return card, user, reply


def n_words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("name", FILES)
def test_file_exists_and_is_clean_jsonl(name: str) -> None:
    raw = (DATA / name).read_bytes()
    text = raw.decode("utf-8")
    assert text.endswith("\n") and "\r" not in text
    lines = text.split("\n")[:-1]
    assert len(lines) >= MIN_ROWS[name]
    for line in lines:
        assert line == json.dumps(json.loads(line), ensure_ascii=False)


def test_readme_and_generator_exist() -> None:
    assert (DATA / "README.md").is_file()
    assert (DATA / "make_samples.py").is_file()


def test_total_size_is_small() -> None:
    assert sum((DATA / name).stat().st_size for name in FILES) < 1_500_000


def test_prompts_format() -> None:
    rows = load("prompts.jsonl")
    assert len(rows) >= 240
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for i, r in enumerate(rows, start=1):
        assert list(r) == ["id", "messages"]
        assert r["id"] == f"rp-{i:04d}"
        card, _ = prompt_key(r["messages"])
        assert card.startswith(("You are ", "Character: ", "Roleplay as ")) and "character" in card


def test_pairs_format() -> None:
    rows = load("pairs.jsonl")
    assert len(rows) >= 600
    for r in rows:
        assert list(r) == ["prompt", "chosen", "rejected"]
        prompt_key(r["prompt"])
        for side in ("chosen", "rejected"):
            assert (
                len(r[side]) == 1
                and r[side][0]["role"] == "assistant"
                and set(r[side][0]) == {"role", "content"}
            )
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert 15 <= n_words(chosen) <= 60
        assert rejected.strip() and rejected != chosen


def test_feedback_format_and_balance() -> None:
    rows = load("feedback.jsonl")
    assert len(rows) >= 600
    for r in rows:
        assert list(r) == ["input_text", "labels"]
        assert r["labels"] in (0, 1) and type(r["labels"]) is int
        card, user, reply = feedback_key(r["input_text"])
        assert card and user and reply
        if r["labels"] == 1:
            assert 15 <= n_words(reply) <= 60
    positives = sum(r["labels"] for r in rows)
    assert 0.4 <= positives / len(rows) <= 0.6


def test_ranked_format() -> None:
    rows = load("ranked.jsonl")
    assert len(rows) >= 120
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    identity = 0
    for i, r in enumerate(rows, start=1):
        assert list(r) == ["id", "prompt", "responses", "ranks"]
        assert r["id"] == f"rk-{i:04d}"
        prompt_key(r["prompt"])
        assert len(r["responses"]) == 5 and len(set(r["responses"])) == 5
        assert all(isinstance(x, str) and x.strip() for x in r["responses"])
        assert sorted(r["ranks"]) == [0, 1, 2, 3, 4]
        identity += r["ranks"] == [0, 1, 2, 3, 4]
        by_rank = {rank: resp for resp, rank in zip(r["responses"], r["ranks"], strict=True)}
        assert n_words(by_rank[0]) > n_words(by_rank[1]) >= 15
    assert identity == 0  # positions never give the ranks away


def test_no_duplicated_prompts() -> None:
    prompts = [prompt_key(r["messages"]) for r in load("prompts.jsonl")]
    pairs = [prompt_key(r["prompt"]) for r in load("pairs.jsonl")]
    ranked = [prompt_key(r["prompt"]) for r in load("ranked.jsonl")]
    feedback = [feedback_key(r["input_text"])[:2] for r in load("feedback.jsonl")]
    for group in (prompts, pairs, ranked, feedback):
        assert len(set(group)) == len(group)
    # prompts.jsonl stays held out from the training files
    held_out = set(prompts)
    assert not held_out & (set(pairs) | set(ranked) | set(feedback))


def test_cards_are_shared_across_files() -> None:
    """Every file uses the same character cards, so an RM trained on one file applies to the others."""
    cards = {prompt_key(r["messages"])[0] for r in load("prompts.jsonl")}
    assert len(cards) >= 25
    assert {prompt_key(r["prompt"])[0] for r in load("pairs.jsonl")} == cards
    assert {feedback_key(r["input_text"])[0] for r in load("feedback.jsonl")} == cards


def test_generator_reproduces_committed_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(DATA / "make_samples.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name
