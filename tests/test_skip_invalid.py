"""`skip_invalid` / `--skip-invalid`: invalid rows dropped, each reported, counted in the outputs; the default
error counts them and names the flag; the kept rows are exactly a clean file's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bonsynth.data import load_prompts, load_records
from bonsynth.errors import InputError
from bonsynth.generate.prompts import FilePrompts
from tests.conftest import corpus, write_jsonl

HH_RLHF = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf-harmless-base-1500.jsonl"
HH_BAD_LINES = [346, 606]  # the two rows whose reply is empty after the shared prompt


def _pairs(n: int, seed: int = 0) -> list[dict]:
    texts = corpus(3 * n, seed=seed)
    return [{"prompt": texts[3 * i], "chosen": texts[3 * i + 1], "rejected": texts[3 * i + 2]} for i in range(n)]


def _dirty_pairs(tmp_path: Path) -> tuple[Path, Path, list[int]]:
    """A pairs file with bad rows in it, the same file without them, and the bad rows' lines."""
    good = _pairs(12)
    lines, bad_lines = [], []
    bad = {
        2: '{"prompt": "hi", "chosen": "fine", "rejected": "   "}',  # empty reply
        5: '{"prompt": "hi", "chosen": "fine", "rejected": "no", ',  # truncated JSON
        6: '{"text": "a whole text", "label": 1}',  # another kind
        9: '["not", "an", "object"]',
    }
    for i, row in enumerate(good):
        if i in bad:
            lines.append(bad[i])
            bad_lines.append(len(lines))
        lines.append(json.dumps(row))
        if i == 3:
            lines.append("")  # blank lines are not rows
    dirty = tmp_path / "dirty.jsonl"
    dirty.write_text("\n".join(lines) + "\n", encoding="utf-8")
    clean = write_jsonl(tmp_path / "clean.jsonl", good)
    return dirty, clean, bad_lines


def test_default_error_counts_the_invalid_rows_and_names_the_flag(tmp_path):
    dirty, _, bad_lines = _dirty_pairs(tmp_path)
    with pytest.raises(InputError) as info:
        load_records(dirty)
    msg = str(info.value)
    assert msg == (f"{dirty}:{bad_lines[0]}: field 'rejected': is empty "
                   "(4 invalid rows in the file; --skip-invalid drops them)"), msg
    one = write_jsonl(tmp_path / "one.jsonl", [*_pairs(2), {"prompt": "p", "chosen": "a"}])
    with pytest.raises(InputError, match=r":3: field 'rejected': missing field.*\(1 invalid row in the file; "
                                         r"--skip-invalid drops it\)$"):
        load_records(one)


def test_skip_invalid_keeps_exactly_the_clean_rows(tmp_path, capsys):
    dirty, clean, bad_lines = _dirty_pairs(tmp_path)
    data = load_records(dirty, skip_invalid=True)
    ref = load_records(clean)
    assert data.kind == ref.kind == "pairwise"
    assert data.records == ref.records  # nothing lost, nothing duplicated, same order
    assert data.skipped.count == 4 and data.skipped.lines == bad_lines
    assert data.skipped.to_json() == {"num_skipped_invalid": 4, "skipped_lines": bad_lines}
    assert ref.skipped.count == 0
    assert [r.source.line for r in data.records][:3] == [1, 2, 4]  # locations are the dirty file's lines
    data.skipped.report()
    err = capsys.readouterr().err.splitlines()
    assert err == [f"skipped invalid row: {dirty}:{bad_lines[0]}: field 'rejected': is empty",
                   f"skipped invalid row: {dirty}:{bad_lines[1]}: malformed JSON: Expecting property name enclosed "
                   "in double quotes (column 1)",  # json counts from the newline that ends the truncated line
                   f"skipped invalid row: {dirty}:{bad_lines[2]}: this row looks like binary data (fields text/label) "
                   "but line 1 is pairwise data; all rows of a file must be the same kind",
                   f"skipped invalid row: {dirty}:{bad_lines[3]}: expected a JSON object, got a list"], err


def test_report_shows_the_first_20_then_a_count(tmp_path, capsys):
    rows = _pairs(3) + [{"prompt": "p", "chosen": "a", "rejected": ""}] * 25
    data = load_records(write_jsonl(tmp_path / "many.jsonl", rows), skip_invalid=True)
    assert len(data.records) == 3 and data.skipped.count == 25 and data.skipped.lines == list(range(4, 29))
    data.skipped.report()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 21 and err[-1] == "skipped invalid row: ... and 5 more", err
    assert err[0].endswith("many.jsonl:4: field 'rejected': is empty")


def test_all_rows_invalid_is_still_an_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": ""}] * 2)
    with pytest.raises(InputError, match=r"no valid records: all 2 rows are invalid \(the first: .*bad.jsonl:1: "):
        load_records(path, skip_invalid=True)


def test_json_and_duplicate_ids_are_skipped_too(tmp_path):
    rows = [{"id": "a", "prompt": "one"}, {"id": "b", "prompt": ""}, {"id": "a", "prompt": "again"}, 7,
            {"id": "c", "prompt": "three"}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(InputError, match=r"p.json:2: field 'prompt': is empty \(3 invalid rows"):
        load_prompts(path)
    recs = load_prompts(path, skip_invalid=True)
    assert [r.id for r in recs] == ["a", "c"]


def test_file_prompts_skip_invalid(tmp_path):
    texts = corpus(10, seed=3)
    rows: list = [{"id": f"q{i}", "prompt": t} for i, t in enumerate(texts)]
    rows.insert(3, {"id": "bad", "prompt": "  "})
    rows.insert(7, {"id": "q1", "prompt": "a duplicate id"})
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    (tmp_path / "p.jsonl").write_text(path.read_text() + "{oops\n")
    with pytest.raises(InputError, match=r"p.jsonl:4: field 'prompt': is empty \(3 invalid rows in the file; "
                                         r"--skip-invalid drops them\)"):
        FilePrompts.open(str(path))
    src = FilePrompts.open(str(path), skip_invalid=True)
    assert len(src) == 10
    assert src.skipped.to_json() == {"num_skipped_invalid": 3, "skipped_lines": [4, 8, 13]}
    assert src.skipped.messages[1].endswith("duplicate prompt id 'q1': also on line 2")
    clean = write_jsonl(tmp_path / "clean.jsonl", [{"id": f"q{i}", "prompt": t} for i, t in enumerate(texts)])
    ref = FilePrompts.open(str(clean))
    got = list(src.read(0, 10))
    assert [(r.id, r.prompt) for r in got] == [(r.id, r.prompt) for r in ref.read(0, 10)]
    assert [(r.id, r.prompt) for r in src.read(5, 8)] == [(r.id, r.prompt) for r in got[5:8]]  # positions skip them
    assert [b for _, b in src.batches(4)] == [got[0:4], got[4:8], got[8:10]]
    assert src.digest() == ref.digest()
    limited = FilePrompts.open(str(path), limit=4, skip_invalid=True)
    assert [r.id for r in limited.read(0, 10)] == ["q0", "q1", "q2", "q3"] and limited.skipped.count == 3


# ---- the real hh-rlhf file (read in place, never copied) ---------------------------------------------------

hh_only = pytest.mark.skipif(not HH_RLHF.is_file(), reason=f"{HH_RLHF} not present")


@hh_only
def test_hh_rlhf_has_two_invalid_rows():
    with pytest.raises(InputError) as info:
        load_records(HH_RLHF)
    assert f":{HH_BAD_LINES[0]}: field " in str(info.value)
    assert str(info.value).endswith("(2 invalid rows in the file; --skip-invalid drops them)")
    data = load_records(HH_RLHF, skip_invalid=True)
    assert data.kind == "pairwise" and len(data.records) == 1498
    assert data.skipped.lines == HH_BAD_LINES
    assert HH_BAD_LINES[0] not in {r.source.line for r in data.records}


# ---- through the CLI ---------------------------------------------------------------------------------------


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`bonsynth ARGS` in this process, as `main()` runs it: (exit code, stdout, stderr)."""
    from bonsynth.cli import cli
    from bonsynth.cli.common import run_guarded

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["bonsynth", *args])
    try:
        run_guarded(cli)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _skip_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("skipped invalid row: ")]


def test_rm_train_skip_invalid_cli(tmp_path, monkeypatch, capsys, tiny_policy_dir):
    dirty, _, bad_lines = _dirty_pairs(tmp_path)
    out = tmp_path / "rm"
    base = ["rm", "train", "--base", str(tiny_policy_dir), "--data", str(dirty), "--objective", "pairwise",
            "--out", str(out), "--epochs", "1", "--batch-size", "4", "--max-length", "32", "--eval-split", "0"]
    code, _, err = run_cli(monkeypatch, capsys, *base)
    assert code == 2 and not out.exists(), err
    assert err.strip().splitlines() == [f"error: {dirty}:{bad_lines[0]}: field 'rejected': is empty "
                                        "(4 invalid rows in the file; --skip-invalid drops them)"]
    code, stdout, err = run_cli(monkeypatch, capsys, *base, "--skip-invalid")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["num_train"] == 12
    assert summary["num_skipped_invalid"] == 4 and summary["skipped_lines"] == {str(dirty): bad_lines}
    assert len(_skip_lines(err)) == 4 and f"{dirty}:{bad_lines[0]}: field 'rejected'" in _skip_lines(err)[0]
    extra = json.loads((out / "bonsynth_rm.json").read_text())["extra"]
    assert extra["summary"]["num_skipped_invalid"] == 4 and extra["training"]["skip_invalid"] is True


def test_rm_eval_and_score_skip_invalid_cli(tmp_path, monkeypatch, capsys, tiny_rm_dir):
    dirty, clean, bad_lines = _dirty_pairs(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "rm", "eval", "--model", str(tiny_rm_dir), "--data", str(dirty))
    assert code == 2 and "(4 invalid rows in the file; --skip-invalid drops them)" in err, err
    code, stdout, err = run_cli(monkeypatch, capsys, "rm", "eval", "--model", str(tiny_rm_dir), "--data", str(dirty),
                                "--data", str(clean), "--json", "--skip-invalid")
    assert code == 0, err
    dirty_res, clean_res = (json.loads(line) for line in stdout.splitlines())
    assert dirty_res["num_examples"] == clean_res["num_examples"] == 12
    assert dirty_res["num_skipped_invalid"] == 4 and dirty_res["skipped_lines"] == bad_lines
    assert clean_res["num_skipped_invalid"] == 0 and clean_res["skipped_lines"] == []
    assert dirty_res["accuracy"] == clean_res["accuracy"] and len(_skip_lines(err)) == 4

    out = tmp_path / "scored.jsonl"
    code, _, err = run_cli(monkeypatch, capsys, "rm", "score", "--model", str(tiny_rm_dir), "--input", str(dirty),
                           "--output", str(out))
    assert code == 2 and not out.exists(), err
    assert err.strip().splitlines()[-1] == (f"error: {dirty}:{bad_lines[0]}: field 'rejected': is empty "
                                            "(4 invalid rows in the file; --skip-invalid drops them)")
    code, stdout, err = run_cli(monkeypatch, capsys, "rm", "score", "--model", str(tiny_rm_dir), "--input", str(dirty),
                                "--output", str(out), "--skip-invalid")
    assert code == 0, err
    assert stdout.strip().startswith(f"scored 12 records -> {out}; prefix sharing: ")
    assert stdout.strip().endswith(f"; skipped 4 invalid rows: lines {', '.join(map(str, bad_lines))}")
    assert len(_skip_lines(err)) == 4
    ref = tmp_path / "ref.jsonl"
    assert run_cli(monkeypatch, capsys, "rm", "score", "--model", str(tiny_rm_dir), "--input", str(clean),
                   "--output", str(ref))[0] == 0
    assert out.read_text() == ref.read_text()  # the kept rows, scored exactly as a clean file's


@pytest.mark.slow
@hh_only
def test_rm_train_on_hh_rlhf_with_skip_invalid(tmp_path, monkeypatch, capsys, tiny_policy_dir):
    out = tmp_path / "rm-hh"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "rm", "train", "--base", str(tiny_policy_dir), "--data", str(HH_RLHF),
        "--objective", "pairwise", "--out", str(out), "--epochs", "0.1", "--batch-size", "16", "--max-length", "64",
        "--eval-split", "0.02", "--skip-invalid")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["num_train"] + summary["num_eval"] == 1498
    assert summary["num_skipped_invalid"] == 2 and summary["skipped_lines"] == {str(HH_RLHF): HH_BAD_LINES}
    assert len(_skip_lines(err)) == 2 and (out / "bonsynth_rm.json").is_file()
