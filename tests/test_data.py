"""The data layer: every source format, every kind and sub-format, and every kind of bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bonsynth.data import (
    BinaryRecord,
    LoadedData,
    Location,
    PairRecord,
    PromptRecord,
    RankedGroup,
    append_jsonl_durable,
    content_id,
    detect_kind,
    iter_raw_rows,
    load_binary,
    load_pairs,
    load_prompts,
    load_ranked,
    load_records,
    record_to_row,
    repair_jsonl_tail,
    write_jsonl_atomic,
)
from bonsynth.errors import ConfigError, InputError

PAIR = {"prompt": "Say hi.", "chosen": " Hi!", "rejected": " Go away."}
USER = {"role": "user", "content": "Say hi."}


def jsonl(tmp_path: Path, rows: list, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def raw(tmp_path: Path, content: str | bytes, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def expect_error(path: Path | str, line: int | None, field: str | None, fn=load_records, **kw) -> InputError:
    """Run `fn(path)` and check the error names the file, the line and the field."""
    with pytest.raises(InputError) as info:
        fn(path, **kw)
    err, msg = info.value, str(info.value)
    assert Path(str(path)).name in msg
    assert err.line == line
    if line is not None:
        assert f":{line}: " in msg
    assert err.field == field
    if field is not None:
        assert f"'{field}'" in msg
    return err


# ---- source formats ---------------------------------------------------------------------------------------


def test_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    path = raw(tmp_path, json.dumps(PAIR) + "\n\n   \n" + json.dumps({**PAIR, "chosen": " Hello."}) + "\n")
    data = load_records(path)
    assert isinstance(data, LoadedData)
    assert (data.kind, data.path, data.fields) == ("pairwise", str(path), ("prompt", "chosen", "rejected"))
    assert data.records == [
        PairRecord("Say hi.", " Hi!", " Go away."),
        PairRecord("Say hi.", " Hello.", " Go away."),
    ]
    assert [r.source for r in data.records] == [Location(str(path), 1), Location(str(path), 4)]


def test_jsonl_with_bom(tmp_path):
    path = raw(tmp_path, b"\xef\xbb\xbf" + json.dumps(PAIR).encode())
    assert load_pairs(path) == [PairRecord("Say hi.", " Hi!", " Go away.")]


def test_json_list_and_lmflow_instances(tmp_path):
    plain = raw(tmp_path, json.dumps([PAIR, PAIR | {"chosen": " Yo"}]), "list.json")
    records = load_pairs(plain)
    assert [r.chosen for r in records] == [" Hi!", " Yo"]
    assert [r.source.line for r in records] == [1, 2]

    lmflow = {"type": "paired_text", "instances": [{"input": "Q?", "positive": "yes", "negative": "no"}]}
    path = raw(tmp_path, json.dumps(lmflow, indent=2), "lmflow.json")
    assert load_pairs(path) == [PairRecord("Q?", "yes", "no")]


def test_json_file_holding_json_lines(tmp_path):
    path = raw(tmp_path, json.dumps(PAIR) + "\n" + json.dumps(PAIR | {"chosen": " Yo"}) + "\n", "lines.json")
    assert [(r.chosen, r.source.line) for r in load_pairs(path)] == [(" Hi!", 1), (" Yo", 2)]


def test_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "bin.parquet"
    pd.DataFrame({"input_text": ["User: hi\nBot: hello", "User: hi\nBot: meh"], "labels": [1, 0]}).to_parquet(
        path
    )
    records = load_binary(path)
    assert records == [BinaryRecord("User: hi\nBot: hello", 1), BinaryRecord("User: hi\nBot: meh", 0)]
    assert records[1].source == Location(str(path), 2)


def test_parquet_nulls_count_as_absent(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "pairs.parquet"
    pd.DataFrame(
        {"prompt": ["a", "b"], "chosen": ["x", "y"], "rejected": ["z", "w"], "margin": [1.5, None]}
    ).to_parquet(path)
    assert [r.margin for r in load_pairs(path)] == [1.5, 0.0]


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    train = datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": "b"}])
    test = datasets.Dataset.from_list([{"prompt": "c"}])
    train.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "two"))

    assert [r.prompt for r in load_prompts(tmp_path / "one")] == ["a", "b"]
    assert [r.prompt for r in load_prompts(tmp_path / "two")] == ["a", "b"]
    assert [r.prompt for r in load_prompts(tmp_path / "two", split="test")] == ["c"]
    err = expect_error(tmp_path / "two", None, None, split="validation")
    assert "'validation'" in str(err) and "train, test" in str(err)


def test_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "folder").mkdir()
    assert "save_to_disk" in str(expect_error(tmp_path / "folder", None, None))


def test_hub_name_offline_is_a_clear_input_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError) as info:
        load_records("someone/no-such-dataset")
    msg = str(info.value)
    assert msg.startswith("someone/no-such-dataset: ") and "no such local file" in msg and "'train'" in msg


def test_hub_name_loads_with_split(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"text": "hello there", "label": True}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_binary("org/feedback", split="test") == [BinaryRecord("hello there", 1)]
    assert calls == [("org/feedback", "test")]


def test_iter_raw_rows_gives_the_rows_as_they_are(tmp_path):
    path = jsonl(tmp_path, [{"prompt": "a", "x": None}, {"prompt": "b", "n": 3}])
    assert list(iter_raw_rows(path)) == [
        (Location(str(path), 1), {"prompt": "a", "x": None}),
        (Location(str(path), 2), {"prompt": "b", "n": 3}),
    ]


# ---- pairwise ---------------------------------------------------------------------------------------------


def test_trl_conversational_pairs(tmp_path):
    row = {
        "prompt": [{"role": "system", "content": "Be kind."}, USER],
        "chosen": [{"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }
    (pair,) = load_pairs(jsonl(tmp_path, [row]))
    assert pair == PairRecord(row["prompt"], "Hi!", "No.")


def test_hh_rlhf_single_turn_keeps_leading_space(tmp_path):
    chosen = "\n\nHuman: Is the sky blue?\n\nAssistant: I think it is."
    rejected = "\n\nHuman: Is the sky blue?\n\nAssistant: I don't know."
    (pair,) = load_pairs(jsonl(tmp_path, [{"chosen": chosen, "rejected": rejected}]))
    # The texts also share " I " after the marker, but the prompt stops at "Assistant:".
    assert pair.prompt == "\n\nHuman: Is the sky blue?\n\nAssistant:"
    assert (pair.chosen, pair.rejected) == (" I think it is.", " I don't know.")
    assert pair.prompt + pair.chosen == chosen and pair.prompt + pair.rejected == rejected


def test_hh_rlhf_multi_turn_splits_at_last_shared_assistant(tmp_path):
    head = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke.\n\nAssistant:"
    rows = [
        {"chosen": head + " Why did the chicken...", "rejected": head + " No."},
        # Diverging at an earlier turn: the prompt is the earlier (last *shared*) Assistant:.
        {
            "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: Bye!",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.",
        },
    ]
    first, second = load_pairs(jsonl(tmp_path, rows))
    assert first.prompt == head
    assert (first.chosen, first.rejected) == (" Why did the chicken...", " No.")
    assert second.prompt == "\n\nHuman: Hi\n\nAssistant:"
    assert second.chosen == " Hello!\n\nHuman: Bye\n\nAssistant: Bye!"
    assert second.rejected == " Go away."


def test_hh_rlhf_without_shared_assistant_turn(tmp_path):
    path = jsonl(
        tmp_path, [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}]
    )
    assert "Assistant:" in str(expect_error(path, 1, "chosen"))


def test_chat_conversation_pairs_split_at_shared_messages(tmp_path):
    turn = [USER, {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "And now?"}]
    row = {
        "chosen": turn + [{"role": "assistant", "content": "Still hi."}],
        "rejected": turn + [{"role": "assistant", "content": "Bye."}],
    }
    (pair,) = load_pairs(jsonl(tmp_path, [row]))
    assert pair == PairRecord(turn, "Still hi.", "Bye.")


@pytest.mark.parametrize(
    "rejected",
    [
        [USER, {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],  # two replies
        [USER, {"role": "user", "content": "b"}],  # a user message, not a reply
        [USER],  # nothing after the prompt
    ],
)
def test_chat_conversation_pairs_need_one_assistant_reply(tmp_path, rejected):
    row = {"chosen": [USER, {"role": "assistant", "content": "Hi!"}], "rejected": rejected}
    assert "exactly one assistant message" in str(expect_error(jsonl(tmp_path, [row]), 1, "rejected"))


def test_positive_negative_with_prompt_or_transcripts(tmp_path):
    rows = [
        {"prompt": "Q?", "positive": "good", "negative": "bad"},
        {"positive": "\n\nHuman: Q?\n\nAssistant: good", "negative": "\n\nHuman: Q?\n\nAssistant: bad"},
    ]
    assert load_pairs(jsonl(tmp_path, rows)) == [
        PairRecord("Q?", "good", "bad"),
        PairRecord("\n\nHuman: Q?\n\nAssistant:", " good", " bad"),
    ]


def test_margin_and_group_id(tmp_path):
    rows = [PAIR | {"margin": 2}, PAIR | {"margin": 0.5, "group_id": 7}, PAIR]
    records = load_pairs(jsonl(tmp_path, rows))
    assert [(r.margin, r.group_id) for r in records] == [(2.0, None), (0.5, "7"), (0.0, None)]


@pytest.mark.parametrize("margin", ["1", True, [1], float("nan")])
def test_margin_must_be_a_number(tmp_path, margin):
    expect_error(jsonl(tmp_path, [PAIR, PAIR | {"margin": margin}]), 2, "margin")


# ---- binary -----------------------------------------------------------------------------------------------


def test_binary_sub_formats(tmp_path):
    assert load_binary(
        jsonl(tmp_path, [{"input_text": "chat", "labels": 1}, {"input_text": "x", "labels": 0}])
    ) == [
        BinaryRecord("chat", 1),
        BinaryRecord("x", 0),
    ]
    assert load_binary(jsonl(tmp_path, [{"text": "t", "label": True}, {"text": "u", "label": False}])) == [
        BinaryRecord("t", 1),
        BinaryRecord("u", 0),
    ]
    rows = [{"prompt": "p", "response": "r", "label": 1}, {"prompt": [USER], "response": "r", "label": 0}]
    assert load_binary(jsonl(tmp_path, rows)) == [
        BinaryRecord("r", 1, prompt="p"),
        BinaryRecord("r", 0, prompt=[USER]),
    ]
    # TRL's unpaired preference format uses `completion`.
    kto = [{"prompt": "p", "completion": [{"role": "assistant", "content": "r"}], "label": False}]
    assert load_binary(jsonl(tmp_path, kto)) == [BinaryRecord("r", 0, prompt="p")]


@pytest.mark.parametrize("label", [2, -1, "1", 1.0, None])
def test_binary_labels_must_be_0_or_1(tmp_path, label):
    path = jsonl(tmp_path, [{"input_text": "ok", "labels": 1}, {"input_text": "bad", "labels": label}])
    expect_error(path, 2, "labels")


# ---- ranked -----------------------------------------------------------------------------------------------


def test_ranks_become_higher_better_scores_and_expand_to_ordered_pairs(tmp_path):
    row = {"prompt": "Q", "responses": ["best", "worst", "mid"], "ranks": [0, 2, 1]}
    path = jsonl(tmp_path, [row])
    (group,) = load_ranked(path)
    assert group == RankedGroup(content_id("Q"), "Q", ("best", "worst", "mid"), (0.0, -2.0, -1.0))
    pairs = load_pairs(path)
    assert {(p.chosen, p.rejected) for p in pairs} == {("best", "worst"), ("best", "mid"), ("mid", "worst")}
    assert len(pairs) == 3 and {p.group_id for p in pairs} == {content_id("Q")}


def test_scores_with_given_ids_and_ties(tmp_path):
    rows = [
        {"id": 1, "prompt": "Q", "responses": ["a", "b", "c"], "scores": [0.5, 2, 0.5]},
        {"group_id": "g2", "prompt": "Q", "responses": ["d", "e"], "scores": [1, 1]},
    ]
    path = jsonl(tmp_path, rows)
    assert [(g.group_id, g.scores) for g in load_ranked(path)] == [("1", (0.5, 2.0, 0.5)), ("g2", (1.0, 1.0))]
    pairs = load_pairs(path)  # the tie a/c and the all-tie group give no pairs
    assert [(p.chosen, p.rejected, p.group_id) for p in pairs] == [("b", "a", "1"), ("b", "c", "1")]


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"prompt": "Q", "responses": ["a", "b"], "ranks": [0]}, "ranks"),
        ({"prompt": "Q", "responses": ["a"], "scores": [1]}, "responses"),
        ({"prompt": "Q", "responses": "a", "scores": [1]}, "responses"),
        ({"prompt": "Q", "responses": ["a", "b"], "ranks": [0, 1], "scores": [1, 0]}, "ranks"),
        ({"prompt": "Q", "responses": ["a", "b"], "ranks": [0, -1]}, "ranks[1]"),
        ({"prompt": "Q", "responses": ["a", "b"], "scores": [1, "x"]}, "scores[1]"),
        ({"prompt": "Q", "responses": ["a", " "], "scores": [1, 0]}, "responses[1]"),
        ({"prompt": "Q", "responses": ["a", "b"]}, "scores"),
    ],
)
def test_bad_ranked_rows(tmp_path, row, field):
    expect_error(jsonl(tmp_path, [row]), 1, field)


def test_load_pairs_on_all_tie_groups(tmp_path):
    path = jsonl(tmp_path, [{"prompt": "Q", "responses": ["a", "b"], "scores": [1, 1]}])
    assert "tie" in str(expect_error(path, None, None, fn=load_pairs))


# ---- prompts ----------------------------------------------------------------------------------------------


def test_prompts_strings_messages_ids_and_meta(tmp_path):
    rows = [{"prompt": "a", "id": 5, "topic": "x"}, {"messages": [USER]}, {"prompt": "b", "id": "b-1"}]
    records = load_prompts(jsonl(tmp_path, rows))
    assert [(r.id, r.prompt, r.is_chat) for r in records] == [
        ("5", "a", False),
        (content_id([USER]), [USER], True),
        ("b-1", "b", False),
    ]
    assert records[0].meta == {"topic": "x"}


def test_derived_prompt_ids_are_stable_and_content_based(tmp_path):
    first = load_prompts(jsonl(tmp_path, [{"prompt": "a"}, {"prompt": "b"}], "one.jsonl"))
    again = load_prompts(jsonl(tmp_path, [{"prompt": "b"}, {"prompt": "a"}], "two.jsonl"))
    assert first[0].id == again[1].id == content_id("a")
    assert first[1].id == again[0].id
    assert first[0].id != first[1].id


def test_duplicate_prompt_ids_name_both_lines(tmp_path):
    path = jsonl(tmp_path, [{"prompt": "a", "id": "x"}, {"prompt": "b"}, {"prompt": "c", "id": "x"}])
    assert "line 1" in str(expect_error(path, 3, "id"))
    path = jsonl(tmp_path, [{"prompt": "a"}, {"prompt": "a"}], "dup.jsonl")
    assert "line 1" in str(expect_error(path, 2, "id"))


def test_duplicate_group_ids(tmp_path):
    row = {"group_id": "g", "prompt": "Q", "responses": ["a", "b"], "scores": [1, 0]}
    assert "line 1" in str(expect_error(jsonl(tmp_path, [row, row]), 2, "group_id"))


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([{"role": "robot", "content": "hi"}], "messages[0].role"),
        ([USER, {"role": "assistant", "content": 3}], "messages[1].content"),
        ([USER, {"role": "assistant", "content": "  "}], "messages[1].content"),
        ([USER, "hello"], "messages[1]"),
        ([], "messages"),
        ("hello", "messages"),
    ],
)
def test_bad_messages(tmp_path, messages, field):
    expect_error(jsonl(tmp_path, [{"messages": [USER]}, {"messages": messages}]), 2, field)


# ---- detection and fmt ------------------------------------------------------------------------------------


def test_detection_order():
    assert detect_kind({"prompt": "p", "chosen": "c", "rejected": "r"}) == "pairwise"
    assert detect_kind({"prompt": "p", "responses": ["a"], "scores": [1]}) == "ranked"
    assert detect_kind({"prompt": "p", "response": "r", "label": 1}) == "binary"
    assert detect_kind({"prompt": "p", "id": 3}) == "prompts"
    assert detect_kind({"prompt": "p", "chosen": "c"}) == "pairwise"  # incomplete, but clearly meant as pairs
    assert detect_kind({"foo": 1}) is None


def test_mixed_kinds_name_the_line(tmp_path):
    path = jsonl(tmp_path, [PAIR, PAIR, {"input_text": "t", "labels": 1}])
    msg = str(expect_error(path, 3, None))
    assert "binary" in msg and "pairwise" in msg and "line 1" in msg


def test_missing_companion_field_is_reported_as_missing(tmp_path):
    path = jsonl(tmp_path, [PAIR, {"prompt": "p", "chosen": "c"}])
    assert "missing field" in str(expect_error(path, 2, "rejected"))


def test_unknown_fields(tmp_path):
    assert "cannot tell" in str(expect_error(jsonl(tmp_path, [{"question": "q"}]), 1, None))


def test_fmt_overrides_detection(tmp_path):
    path = jsonl(tmp_path, [PAIR | {"id": "a"}])
    (prompt,) = load_prompts(path, fmt="prompts")
    assert (prompt.id, prompt.prompt, prompt.meta) == (
        "a",
        "Say hi.",
        {"chosen": " Hi!", "rejected": " Go away."},
    )
    assert load_records(path, fmt=None).kind == load_records(path, fmt="auto").kind == "pairwise"


def test_forced_kind_with_missing_fields(tmp_path):
    path = jsonl(tmp_path, [{"prompt": "p"}])
    expect_error(path, 1, "chosen", fmt="pairwise")
    expect_error(path, 1, "response", fmt="binary")
    expect_error(path, 1, "responses", fmt="ranked")
    expect_error(jsonl(tmp_path, [{"text": "t"}], "t.jsonl"), 1, "prompt", fmt="prompts")
    with pytest.raises(ConfigError):
        load_records(path, fmt="triples")


def test_loaders_insist_on_their_kind(tmp_path):
    binary = jsonl(tmp_path, [{"input_text": "t", "labels": 1}])
    msg = str(expect_error(binary, None, None, fn=load_pairs))
    assert "expected pairwise data, found binary (fields input_text/labels)" in msg
    expect_error(binary, None, None, fn=load_prompts)
    expect_error(binary, None, None, fn=load_ranked)
    assert "fmt='prompts'" in str(
        expect_error(jsonl(tmp_path, [PAIR], "p.jsonl"), None, None, fn=load_prompts)
    )
    expect_error(jsonl(tmp_path, [PAIR], "p.jsonl"), None, None, fn=load_binary)


# ---- bad input --------------------------------------------------------------------------------------------


def test_malformed_json_line(tmp_path):
    path = raw(tmp_path, json.dumps(PAIR) + "\n" + '{"prompt": "a",\n')
    assert "malformed JSON" in str(expect_error(path, 2, None))


def test_malformed_json_file(tmp_path):
    path = raw(tmp_path, '[\n  {"prompt": "a"},\n  {"prompt": }\n]', "bad.json")
    assert "malformed JSON" in str(expect_error(path, 3, None))


def test_non_object_rows(tmp_path):
    expect_error(raw(tmp_path, json.dumps(PAIR) + "\n[1, 2]\n"), 2, None)
    expect_error(raw(tmp_path, json.dumps([PAIR, "x"]), "list.json"), 2, None)
    expect_error(raw(tmp_path, json.dumps({"data": []}), "obj.json"), None, "instances")


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"prompt": "p", "chosen": "c"}, "rejected"),
        ({"prompt": "p", "chosen": 3, "rejected": "r"}, "chosen"),
        ({"prompt": 3, "chosen": "c", "rejected": "r"}, "prompt"),
        ({"prompt": "p", "chosen": "c", "rejected": "   "}, "rejected"),
        ({"prompt": "", "chosen": "c", "rejected": "r"}, "prompt"),
        ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": ["x"]}, "rejected"),
        ({"input_text": "  ", "labels": 1}, "input_text"),
        ({"prompt": "p", "id": 1.5}, "id"),
        ({"prompt": "p", "messages": [USER]}, "messages"),
    ],
)
def test_missing_wrong_type_and_empty_fields(tmp_path, row, field):
    path = jsonl(tmp_path, [row])
    expect_error(path, 1, field)
    # The same checks name the record (index + 1) in json and parquet files.
    expect_error(raw(tmp_path, json.dumps([row]), "data.json"), 1, field)


def test_non_utf8_bytes_name_the_line(tmp_path):
    good = json.dumps(PAIR).encode()
    path = raw(
        tmp_path, good + b"\n" + good + b"\n" + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'
    )
    assert "UTF-8" in str(expect_error(path, 3, None))
    json_path = raw(tmp_path, b"[\n" + good + b",\n" + b'{"prompt": "\xff"}\n]', "bad.json")
    assert "UTF-8" in str(expect_error(json_path, 3, None))


def test_missing_file(tmp_path, monkeypatch):
    assert "does not exist" in str(expect_error(tmp_path / "nope.jsonl", None, None))
    assert "does not exist" in str(expect_error("./nope/here.json", None, None))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    # No suffix, but `data/` is a local folder: a missing local path, not a Hub name.
    assert "does not exist" in str(expect_error("data/pairs", None, None))


@pytest.mark.parametrize(
    ("content", "name"),
    [
        ("", "empty.jsonl"),
        ("\n  \n\n", "blank.jsonl"),
        ("", "empty.json"),
        ("[]", "list.json"),
        ('{"instances": []}', "i.json"),
    ],
)
def test_empty_inputs(tmp_path, content, name):
    assert "no records" in str(expect_error(raw(tmp_path, content, name), None, None))


def test_unsupported_file_type(tmp_path):
    assert "unsupported file type '.csv'" in str(expect_error(raw(tmp_path, "a,b\n", "data.csv"), None, None))


def test_unreadable_parquet(tmp_path):
    assert "parquet" in str(expect_error(raw(tmp_path, b"not parquet", "x.parquet"), None, None))


# ---- writers ----------------------------------------------------------------------------------------------


def test_write_jsonl_atomic_writes_utf8_and_counts(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    assert write_jsonl_atomic(path, iter([{"text": "café ☕"}, {"n": 1}])) == 2
    assert path.read_bytes() == '{"text": "café ☕"}\n{"n": 1}\n'.encode()
    assert os.listdir(path.parent) == ["out.jsonl"]


def test_write_jsonl_atomic_leaves_no_file_on_error(tmp_path):
    def rows():
        yield {"a": 1}
        raise RuntimeError("boom")

    path = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        write_jsonl_atomic(path, rows())
    assert os.listdir(tmp_path) == []

    path.write_text('{"old": true}\n')  # an existing file stays as it was
    with pytest.raises(RuntimeError):
        write_jsonl_atomic(path, rows())
    assert os.listdir(tmp_path) == ["out.jsonl"] and path.read_text() == '{"old": true}\n'


def test_append_jsonl_durable_by_path_and_handle(tmp_path):
    path = tmp_path / "out.jsonl"
    assert append_jsonl_durable(path, [{"i": 0}]) == 1
    assert append_jsonl_durable(path, [{"i": 1}, {"i": 2}]) == 2
    with open(path, "a", encoding="utf-8") as fh:
        assert append_jsonl_durable(fh, [{"i": 3}]) == 1
    assert [row["i"] for _, row in iter_raw_rows(path)] == [0, 1, 2, 3]
    with pytest.raises(TypeError):  # a row that cannot be serialised appends nothing
        append_jsonl_durable(path, [{"i": 4}, {"bad": object()}])
    assert len(path.read_text().splitlines()) == 4


def test_repair_torn_tail_before_resuming(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"i": 0}\n{"i": 1}\n{"i": 2, "te')
    assert repair_jsonl_tail(path) == len('{"i": 2, "te')
    assert repair_jsonl_tail(path) == 0
    append_jsonl_durable(path, [{"i": 2}])
    assert [row["i"] for _, row in iter_raw_rows(path)] == [0, 1, 2]
    torn = raw(tmp_path, '{"i": 0', "torn.jsonl")
    append_jsonl_durable(torn, [{"i": 0}])  # by path, the torn tail is cut automatically
    assert torn.read_text() == '{"i": 0}\n'


def test_records_round_trip_through_jsonl(tmp_path):
    chat = [USER]
    records = {
        "pairwise": [PairRecord("p", "c", "r", margin=1.5, group_id="g"), PairRecord(chat, "c", "r")],
        "binary": [BinaryRecord("t", 1), BinaryRecord("r", 0, prompt=chat)],
        "ranked": [RankedGroup("g", chat, ("a", "b"), (1.0, -0.5))],
        "prompts": [PromptRecord("x", "p", meta={"topic": "t"}), PromptRecord("y", chat)],
    }
    for kind, recs in records.items():
        path = tmp_path / f"{kind}.jsonl"
        write_jsonl_atomic(path, (record_to_row(r) for r in recs))
        data = load_records(path, fmt=kind)
        assert data.records == recs
        assert [r.meta for r in data.records if isinstance(r, PromptRecord)] == [
            r.meta for r in recs if isinstance(r, PromptRecord)
        ]


def test_one_dumps_row_for_every_jsonl_file():
    """`generate` and the loop write through the same encoder as the data writers: one set of rules."""
    import math

    import numpy as np

    from bonsynth.data.writers import dumps_row
    from bonsynth.generate import outputs

    assert outputs.dumps_row is dumps_row
    row = {"text": "café", "r": np.float32(0.5), "ids": np.arange(2)}
    assert dumps_row(row) == '{"text": "café", "r": 0.5, "ids": [0, 1]}\n'
    assert dumps_row(row, compact=True) == '{"text":"café","r":0.5,"ids":[0,1]}\n'
    assert outputs.row_bytes([row, {"n": 1}]) == '{"text":"café","r":0.5,"ids":[0,1]}\n{"n":1}\n'.encode()
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            dumps_row({"reward": bad})
