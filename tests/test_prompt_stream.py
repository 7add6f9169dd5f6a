"""`generate` reads its prompts batch by batch: same records as `load_prompts`, bad input still fails before
anything is written, a file changed under a run is an error, and memory does not grow with the prompt count."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from bonsynth.data.readers import load_prompts
from bonsynth.data.records import PromptRecord
from bonsynth.errors import ConfigError, InputError
from bonsynth.generate.backends.base import Completion, GenerationBackend, GenerationResult, SamplingConfig
from bonsynth.generate.pipeline import GenerateConfig, apply_shard, run_generate
from bonsynth.generate.prompts import FilePrompts, PromptsChanged, PromptSource
from bonsynth.rm.ensemble import EnsembleScores
from tests.conftest import corpus, write_jsonl

TEXTS = ("alpha beta", "gamma delta", "alpha gamma")  # few distinct bigrams: the run summary stays small


class FakeBackend(GenerationBackend):
    """N fixed completions per prompt, no model: isolates the prompt path (and counts what it was given)."""

    name = "fake"

    def __init__(self) -> None:
        self.seen = 0

    def generate(self, prompts: list[PromptRecord], sampling: SamplingConfig) -> list[GenerationResult]:
        self.seen += len(prompts)
        comps = tuple(Completion(text=TEXTS[i % 3], finish_reason="stop", num_tokens=2) for i in range(sampling.n))
        return [GenerationResult(prompt_text="", prompt_tokens=1, completions=comps) for _ in prompts]


class FakeScorer:
    """A reward from the prompt id and the text: deterministic, distinct, no model."""

    def score(self, prompts: list, texts: list[str]) -> EnsembleScores:
        rewards = [float(len(t) + len(str(p)) % 7) for p, t in zip(prompts, texts, strict=True)]
        return EnsembleScores(combined=rewards, per_model={"fake": rewards})

    def describe(self) -> list[dict]:
        return [{"name": "fake"}]


def _cfg(prompts: Path, out: Path, **kw) -> GenerateConfig:
    base = dict(policy="fake-policy", rewards=["fake-rm"], prompts=str(prompts), out=str(out), n=3,
                batch_size=4, show_progress=False, select="pairs")
    base.update(kw)
    return GenerateConfig(**base)


def _full(records) -> list[tuple]:
    """Everything a record holds (`==` on PromptRecords ignores meta and source)."""
    return [(r.id, r.prompt, r.meta, str(r.source)) for r in records]


def _rows(n: int, seed: int = 1) -> list[dict]:
    rows = [{"id": f"p{i}", "prompt": t, "extra": i} for i, t in enumerate(corpus(n, seed=seed))]
    rows[2] = {"messages": [{"role": "user", "content": "hello there"}], "extra": 2}  # a chat prompt, derived id
    return rows


# ---- the source reads what load_prompts reads ---------------------------------------------------------------


def test_batches_equal_load_prompts_for_every_source_kind(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _rows(11)
    jl = write_jsonl(tmp_path / "p.jsonl", rows)
    js = tmp_path / "p.json"
    js.write_text(json.dumps({"instances": rows}), encoding="utf-8")
    flat = [dict(r, id=r.get("id"), prompt=r.get("prompt"), messages=r.get("messages")) for r in rows]  # one schema
    pq = tmp_path / "p.parquet"
    datasets.Dataset.from_list(flat).to_parquet(str(pq))
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(flat).save_to_disk(str(folder))
    for source in (jl, js, pq, folder):
        expected = load_prompts(source)
        src = FilePrompts.open(str(source))
        assert len(src) == 11
        got = [rec for _, batch in src.batches(4) for rec in batch]
        assert _full(got) == _full(expected), source
        assert [lo for lo, _ in src.batches(4, start=3)] == [3, 7]
        assert _full(rec for _, b in src.batches(4, start=3) for rec in b) == _full(expected[3:])


def test_limit_shard_and_resume_positions_match_list_slicing(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", _rows(23))
    records = load_prompts(path)
    for limit in (None, 0, 5, 23, 40, -3):
        src = FilePrompts.open(str(path), limit=limit)
        want = records if limit is None else records[:limit]
        assert len(src) == len(want)
        assert _full(r for _, b in src.batches(5) for r in b) == _full(want)
    for shard in ("0/3", "1/3", "2/3", "3/4"):
        cfg = _cfg(path, tmp_path / "o", shard=shard, batch_size=4)
        from_file, info = apply_shard(cfg, FilePrompts.open(str(path)))
        from_list, info_list = apply_shard(cfg, records)
        assert info == info_list
        lo, hi = info["range"]
        assert len(from_file) == len(from_list) == hi - lo
        for start in (0, 4, hi - lo):  # a resumed shard starts at a batch boundary (or at its end)
            got = [(pos, _full(b)) for pos, b in from_file.batches(4, start)]
            assert got == [(pos, _full(b)) for pos, b in from_list.batches(4, start)]
            assert [r for _, b in got for r in b] == _full(records[lo + start : hi])


def test_hub_dataset_is_read_again_from_the_cache(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"id": f"h{i}", "prompt": f"hello {i}"} for i in range(5)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    src = FilePrompts.open("org/prompts")
    assert [r.id for _, b in src.batches(2, start=2) for r in b] == ["h2", "h3", "h4"]
    assert calls == [("org/prompts", "train")] * 2


def test_a_list_is_served_through_the_same_interface(tmp_path):
    records = load_prompts(write_jsonl(tmp_path / "p.jsonl", _rows(9)))
    src = PromptSource(records)
    assert len(src) == 9 and src.head(2) == records[:2]
    assert [(lo, b) for lo, b in src.batches(4, 4)] == [(4, records[4:8]), (8, records[8:])]
    part = src.slice(4, 9)
    assert len(part) == 5 and [b for _, b in part.batches(2, 2)] == [records[6:8], records[8:9]]


# ---- bad input fails before any output; a changed file is an error -------------------------------------------


def test_bad_row_at_the_end_fails_before_any_output(tmp_path):
    rows = [{"id": f"b{i}", "prompt": f"prompt number {i}"} for i in range(2000)]
    rows[-1] = {"id": "last", "prompt": ""}
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "never"
    backend = FakeBackend()
    with pytest.raises(InputError) as info:
        run_generate(_cfg(bad, out), backend=backend, scorer=FakeScorer())
    assert info.value.line == 2000 and info.value.field == "prompt"
    assert backend.seen == 0 and not out.exists()
    rows[-1] = {"id": "b3", "prompt": "again"}  # a duplicate id, also at the very end
    write_jsonl(bad, rows)
    with pytest.raises(InputError, match="duplicate prompt id 'b3': also on line 4") as info:
        run_generate(_cfg(bad, out), backend=backend, scorer=FakeScorer())
    assert info.value.line == 2000 and backend.seen == 0 and not out.exists()


def test_cli_bad_row_at_the_end_exit_2_names_the_line(tmp_path, tiny_policy_dir, tiny_rm_dir):
    rows = [{"id": f"b{i}", "prompt": f"prompt number {i}"} for i in range(2000)]
    rows[1999] = {"id": "last", "prompt": 42}
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "never"
    r = subprocess.run([sys.executable, "-m", "bonsynth", "generate", "--policy", str(tiny_policy_dir), "--reward",
                        str(tiny_rm_dir), "--prompts", str(bad), "--out", str(out), "--backend", "hf", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "bad.jsonl:2000: field 'prompt'" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def _rewrite(path: Path, text: str, *, keep_stamp: bool) -> None:
    """Rewrite `path` in place (same inode); with keep_stamp, put its mtime back (size must not change)."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.write(text.encode("utf-8"))
        fh.truncate()
    if keep_stamp:
        assert path.stat().st_size == st.st_size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_file_changed_between_validation_and_run_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", _rows(10))
    original = path.read_text(encoding="utf-8")

    # Appended to: the size differs; the run stops before its first batch and leaves no output behind.
    src = FilePrompts.open(str(path))
    path.write_text(original + json.dumps({"id": "new", "prompt": "x"}) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    backend = FakeBackend()
    with pytest.raises(PromptsChanged, match="p.jsonl: the prompts file changed after it was validated"):
        run_generate(_cfg(path, out), backend=backend, scorer=FakeScorer(), prompts=src)
    assert backend.seen == 0 and not out.exists()

    # Two rows swapped, same size, mtime put back: the ids of the first pass catch it.
    _rewrite(path, original, keep_stamp=False)
    src = FilePrompts.open(str(path))
    lines = original.splitlines(keepends=True)
    swapped = [*lines[:6], lines[7], lines[6], *lines[8:]]
    _rewrite(path, "".join(swapped), keep_stamp=True)
    with pytest.raises(PromptsChanged, match=r"prompt 7 now has id 'p7' \(.*p.jsonl:7\)"):
        [b for _, b in src.batches(4)]

    # Replaced (a new inode, as an editor saves) mid-run, after one batch landed: an error, and the batch
    # already written stays, so putting the file back and resuming gives what an undisturbed run gives.
    _rewrite(path, original, keep_stamp=False)
    ref = tmp_path / "ref"
    run_generate(_cfg(path, ref), backend=FakeBackend(), scorer=FakeScorer())

    def replace_file(done: int, total: int) -> None:
        if done == 4:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(original.replace("p9", "q9"), encoding="utf-8")
            os.replace(tmp, path)

    with pytest.raises(PromptsChanged, match="changed after it was validated"):
        run_generate(_cfg(path, out), backend=FakeBackend(), scorer=FakeScorer(), on_batch=replace_file)
    assert json.loads((out / "state.json").read_text())["prompts_done"] == 4
    path.write_text(original, encoding="utf-8")
    run_generate(_cfg(path, out, resume=True), backend=FakeBackend(), scorer=FakeScorer())
    for name in ("candidates.jsonl", "sft.jsonl", "dpo.jsonl"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def test_resume_after_the_file_was_edited_is_refused(tmp_path):
    """A crash, an edit, then --resume (a new process, so no stamp to compare): the content digest catches it."""
    path = write_jsonl(tmp_path / "p.jsonl", _rows(10))
    original = path.read_text(encoding="utf-8")
    out, ref = tmp_path / "out", tmp_path / "ref"
    run_generate(_cfg(path, ref), backend=FakeBackend(), scorer=FakeScorer())

    def crash(done: int, total: int) -> None:
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_generate(_cfg(path, out), backend=FakeBackend(), scorer=FakeScorer(), on_batch=crash)
    state = json.loads((out / "state.json").read_text())
    assert state["prompts_done"] == 4 and state["prompts_digest"]
    # Same ids, one prompt text changed (ids were explicit, so only the content digest can tell).
    lines = original.splitlines(keepends=True)
    row = json.loads(lines[5])
    row["prompt"] += " (edited)"
    path.write_text("".join([*lines[:5], json.dumps(row) + "\n", *lines[6:]]), encoding="utf-8")
    backend = FakeBackend()
    with pytest.raises(ConfigError, match="not the ones the run in .* started with"):
        run_generate(_cfg(path, out, resume=True), backend=backend, scorer=FakeScorer())
    assert backend.seen == 0 and json.loads((out / "state.json").read_text())["prompts_done"] == 4
    # Put back, the resume finishes and equals the undisturbed run; a shard records a digest of its own range.
    path.write_text(original, encoding="utf-8")
    run_generate(_cfg(path, out, resume=True), backend=FakeBackend(), scorer=FakeScorer())
    for name in ("candidates.jsonl", "sft.jsonl", "dpo.jsonl"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert FilePrompts.open(str(path)).digest() == PromptSource(load_prompts(str(path))).digest()
    assert FilePrompts.open(str(path), limit=3).digest() == PromptSource(load_prompts(str(path))[:3]).digest()


# ---- memory ---------------------------------------------------------------------------------------------------


def _big_prompts(path: Path, n: int) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"m{i}", "prompt": f"{i} " + "lorem ipsum " * 84}) + "\n")  # ~1 KB
    return path


def _peak_growth(fn) -> int:
    """Peak bytes allocated by Python while `fn` runs, over what was allocated before."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_prompts(tmp_path, monkeypatch):
    small, big = _big_prompts(tmp_path / "s.jsonl", 2_000), _big_prompts(tmp_path / "b.jsonl", 20_000)
    data = big.stat().st_size - small.stat().st_size  # ~19 MB more prompts

    def run(path: Path) -> None:
        cfg = _cfg(path, tmp_path / "out", n=1, batch_size=1000, select="best")
        shutil.rmtree(cfg.out, ignore_errors=True)
        run_generate(cfg, backend=FakeBackend(), scorer=FakeScorer())

    def growth() -> int:
        run(small)  # warm-up: first-call imports and caches are not the prompts' memory
        return _peak_growth(lambda: run(big)) - _peak_growth(lambda: run(small))

    # The whole run: the validation pass (its id set, ~100 B a prompt, is all that grows), then the
    # batch-by-batch read, generation, writing and the summary.
    grew = growth()
    assert grew < 0.15 * data, f"peak grew {grew / 1e6:.1f} MB for {data / 1e6:.1f} MB more prompts"

    # After validation, reading the batches holds one batch and an 8-byte id hash a prompt.
    def read_peak(path: Path) -> int:
        src = FilePrompts.open(str(path))
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in src.batches(1000):
            pass
        return tracemalloc.get_traced_memory()[1] - base

    tracemalloc.start()
    try:
        read_grew = read_peak(big) - read_peak(small)
    finally:
        tracemalloc.stop()
    assert read_grew < 0.02 * data, f"reading grew {read_grew / 1e6:.2f} MB for {data / 1e6:.1f} MB more prompts"

    # The same measure fails for a run that holds the prompts in a list, as run_generate did: it can fail.
    from bonsynth.generate import pipeline

    monkeypatch.setattr(pipeline, "load_generation_prompts",
                        lambda cfg: PromptSource(load_prompts(cfg.prompts, fmt=cfg.prompt_format)[: cfg.limit]))
    held = growth()
    assert held > 0.8 * data, f"holding the prompts grew the peak only {held / 1e6:.1f} MB"
