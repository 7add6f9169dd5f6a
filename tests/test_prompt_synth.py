"""`bonsynth prompts synth`: few-shot prompt synthesis from seeds, its filters and MinHash LSH dedup."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from conftest import WORDS, corpus, run_bonsynth, write_jsonl

from bonsynth.data.readers import load_prompts
from bonsynth.data.synth import (
    FILTERS,
    FilterSettings,
    LanguageProfile,
    NearDupIndex,
    Seed,
    SynthFilter,
    clean_candidate,
    dedup,
    dedup_exact,
    jaccard,
    lsh_params,
    shingles,
)
from bonsynth.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEED_TEXTS = [
    "Write a short poem about the sea and the ships that sail on it.",
    "Explain how a rainbow forms after the rain, in simple words for a child.",
    "Give me three tips for keeping a small garden alive in a dry summer.",
    "Tell me a story about a knight who is afraid of the dark.",
    "What is the best way to learn to play the guitar as an adult?",
    "Describe the city at night from the point of view of a cat.",
]


main = run_bonsynth  # the CLI in-process: (exit code, stdout, stderr)


def seeds_file(tmp_path: Path, texts=SEED_TEXTS) -> Path:
    return write_jsonl(tmp_path / "seeds.jsonl", [{"id": f"s{i}", "prompt": t} for i, t in enumerate(texts)])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------ dedup, unit level


def _planted(rng: random.Random, n: int, vocab: int) -> list[str]:
    """Random word sets, a third of them edited copies of an earlier one (similarities spread over 0.3..1)."""
    texts: list[str] = []
    for _ in range(n):
        if texts and rng.random() < 0.35:
            words = rng.choice(texts).split()
            for _ in range(rng.randint(0, 4)):
                words[rng.randrange(len(words))] = f"w{rng.randrange(vocab)}"
            if rng.random() < 0.5:
                words.append(f"w{rng.randrange(vocab)}")
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(f"w{rng.randrange(vocab)}" for _ in range(rng.randint(4, 14))))
    return texts


@pytest.mark.parametrize("ngram", [1, 2])
@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_lsh_dedup_equals_brute_force_exact_jaccard(threshold, ngram):
    rng = random.Random(int(threshold * 10) + ngram)
    for trial in range(3):
        texts = _planted(rng, 400, vocab=300)
        kept = dedup(texts, threshold, ngram=ngram)
        assert kept == dedup_exact(texts, threshold, ngram=ngram), (threshold, trial)
        # the planted near-duplicates really exercised the threshold: some dropped, some kept
        assert 0 < len(texts) - len(kept) < len(texts) // 2
        # exact verification: no kept pair is at or above the threshold
        sets = [shingles(texts[i], ngram) for i in kept]
        assert all(jaccard(a, b) < threshold for i, a in enumerate(sets) for b in sets[:i])


def test_lsh_params_keep_misses_at_the_threshold_rare():
    for t in (0.5, 0.7, 0.9):
        b, r = lsh_params(t, 128)
        assert b * r <= 128 and (1 - t ** r) ** b <= 1e-3


def test_first_occurrence_wins_and_index_reports_what_it_duplicates():
    idx = NearDupIndex(0.7)
    assert idx.add("a", "the quick brown fox jumps over the lazy dog") is None
    assert idx.add("b", "the quick brown fox jumps over the lazy cat dog") == "a"  # J = 8/9
    assert idx.add("c", "an entirely different sentence about gardens") is None
    assert dedup(["x y z w", "x y z w v", "x y z w"], 0.7) == [0]
    assert dedup(["", "", "a b"], 0.7) == [0, 1, 2]  # empty texts share nothing (the empty filter drops them)


# ---------------------------------------------------------------------------------- filters, unit level


def test_every_filter_is_counted():
    seeds = [Seed(f"s{i}", t) for i, t in enumerate(SEED_TEXTS)]
    filt = SynthFilter(seeds, FilterSettings(min_words=4, max_words=20))
    cases = {
        "": "empty",
        "   \n ": "empty",
        "poem about ships": "too_short",
        " ".join(["word"] * 21): "too_long",
        "Schreibe ein kurzes Gedicht über das Meer und die Schiffe darauf.": "language",
        "Напиши короткое стихотворение о море и кораблях.": "language",
        "  write a short poem about the SEA and the ships that sail on it.": "seed_copy",
        "Write a short poem about the sea and the ships that sail across it.": "near_duplicate_seed",
        "Name four animals that live in the desert and how they find water.": None,
        "Name four animals that live in the desert and how they find food.": "near_duplicate_synth",
        "How do I make a good cup of coffee at the station in the morning?": None,
    }
    for text, want in cases.items():
        assert filt.accept(text) == want, text
    expected = {name: sum(1 for w in cases.values() if w == name) for name in FILTERS}
    assert dict(filt.counts) == expected
    assert all(expected[name] >= 1 for name in FILTERS)
    assert filt.accepted == 2


def test_language_profile_script_and_function_words():
    prof = LanguageProfile.from_texts(SEED_TEXTS)
    assert prof.script == "LATIN" and {"the", "a"} <= prof.stopwords
    assert prof.accepts("Explain why the sky looks blue on a clear day.")
    assert not prof.accepts("Erkläre, warum der Himmel an einem klaren Tag blau aussieht.")
    assert not prof.accepts("为什么晴天的时候天空看起来是蓝色的")
    assert prof.accepts("Hi there")  # too short to judge by function words; Latin script
    # too few seeds to learn function words: only the script check applies
    assert LanguageProfile.from_texts(["Hello world"]).stopwords == frozenset()


def test_clean_candidate():
    assert clean_candidate('  Example 4: "Tell me a joke."  ') == "Tell me a joke."
    assert clean_candidate("New prompt: Describe a dragon.\nExample 5:\nAnother one") == "Describe a dragon."
    assert clean_candidate("Line one\nline two") == "Line one\nline two"


# ------------------------------------------------------------------------------- the command, tiny model


def synth_args(seeds: Path, policy: Path, out: Path, *extra: str) -> list[str]:
    return ["prompts", "synth", "--seeds", str(seeds), "--policy", str(policy), "--out", str(out), "--backend", "hf",
            "--device", "cpu", "--max-new-tokens", "20", "--quiet", "--no-language-check", "--min-words", "1",
            *extra]


def test_output_reads_back_and_generate_runs_on_it(tmp_path, tiny_policy_dir, tiny_rm_dir):
    seeds = seeds_file(tmp_path, corpus(8, seed=3))
    out = tmp_path / "synth.jsonl"
    code, stdout, err = main(synth_args(seeds, tiny_policy_dir, out, "--num", "5", "--seed", "3"))
    assert code == 0, err
    got = rows(out)
    records = load_prompts(out)
    assert [r.id for r in records] == [f"synth-3-{i:06d}" for i in range(5)] == [r["id"] for r in got]
    seed_ids = {f"s{i}" for i in range(8)}
    assert all(len(r["seed_ids"]) == 3 and set(r["seed_ids"]) <= seed_ids for r in got)
    manifest = json.loads((tmp_path / "synth.manifest.json").read_text())
    default = Path(__file__).resolve().parents[1] / "bonsynth/data/synth_prompts/fewshot.txt"
    assert manifest["template"]["sha256"] == hashlib.sha256(default.read_bytes()).hexdigest()
    assert manifest["model"] == str(tiny_policy_dir) and manifest["seed"] == 3
    assert set(manifest["counts"]) == {*FILTERS, "accepted"} and manifest["counts"]["accepted"] == 5
    assert manifest["candidates"] == sum(manifest["counts"].values())
    assert not (tmp_path / "synth.jsonl.partial").exists()
    assert "wrote 5 prompts" in stdout

    gen = tmp_path / "gen"
    code, _, err = main(["generate", "--policy", str(tiny_policy_dir), "--reward", str(tiny_rm_dir), "--prompts",
                         str(out), "--n", "2", "--max-new-tokens", "4", "--backend", "hf", "--device", "cpu",
                         "--out", str(gen), "--quiet"])
    assert code == 0, err
    assert {r["id"] for r in rows(gen / "sft.jsonl")} == {r["id"] for r in got}


def test_chat_seeds_get_a_new_user_turn_for_a_seed_card(tmp_path, tiny_policy_dir):
    cards = ["You are a pirate captain.", "You are a grumpy wizard."]
    texts = corpus(6, seed=7)
    seeds = write_jsonl(tmp_path / "chat.jsonl", [
        {"id": f"c{i}", "messages": [{"role": "system", "content": cards[i % 2]}, {"role": "user", "content": t}]}
        for i, t in enumerate(texts)])
    out = tmp_path / "chat_synth.jsonl"
    code, _, err = main(synth_args(seeds, tiny_policy_dir, out, "--num", "4"))
    assert code == 0, err
    by_id = {f"c{i}": cards[i % 2] for i in range(6)}
    for rec, row in zip(load_prompts(out), rows(out), strict=True):
        assert rec.is_chat and [m["role"] for m in rec.prompt] == ["system", "user"]
        assert rec.prompt[0]["content"] == by_id[row["seed_ids"][0]]  # the first shot's card
    assert json.loads((tmp_path / "chat_synth.manifest.json").read_text())["template"]["path"] == "(default chat)"


class _Interrupting:
    """A backend that dies after `calls` generate() calls, as a killed run would."""

    def __init__(self, inner, calls: int) -> None:
        self.inner, self.left = inner, calls

    def generate(self, prompts, sampling):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.inner.generate(prompts, sampling)

    def describe(self):
        return self.inner.describe()

    def close(self):
        pass


def test_reproducible_and_resume_gives_the_same_output(tmp_path, tiny_policy_dir):
    from bonsynth.generate.backends import make_backend
    from bonsynth.generate.synth import SynthConfig, run_synth

    seeds = seeds_file(tmp_path, corpus(8, seed=4))
    common = ["--num", "6", "--batch-size", "2", "--seed", "7"]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(synth_args(seeds, tiny_policy_dir, a, *common))[0] == 0
    assert main(synth_args(seeds, tiny_policy_dir, b, *common))[0] == 0
    assert a.read_bytes() == b.read_bytes()  # same seed, same output

    c = tmp_path / "c.jsonl"
    cfg = SynthConfig(seeds=str(seeds), policy=str(tiny_policy_dir), num=6, out=str(c), backend="hf", seed=7,
                      batch_size=2, max_new_tokens=20, show_progress=False,
                      filters=FilterSettings(min_words=1, language_check=False))
    with make_backend("hf", str(tiny_policy_dir), device="cpu") as hf, pytest.raises(KeyboardInterrupt):
        run_synth(cfg, backend=_Interrupting(hf, 2))
    partial = tmp_path / "c.jsonl.partial"
    assert partial.exists() and not c.exists()
    done = [r for line in rows(partial)[1:] for r in line["rows"]]
    assert 0 < len(done) < 6
    # a torn last line (killed mid-write) is cut, and that batch is redone
    with partial.open("a") as fh:
        fh.write('{"requests": [4, 6], "rows": [')
    code, _, err = main(synth_args(seeds, tiny_policy_dir, c, *common))  # no --resume: refuses, keeps the partial
    assert code == 2 and "--resume" in err and partial.exists()
    code, _, err = main(synth_args(seeds, tiny_policy_dir, c, *common, "--resume"))
    assert code == 0, err
    assert c.read_bytes() == a.read_bytes() and not partial.exists()
    m_a = json.loads((tmp_path / "a.manifest.json").read_text())
    m_c = json.loads((tmp_path / "c.manifest.json").read_text())
    assert m_a["counts"] == m_c["counts"] and m_a["requests"] == m_c["requests"]
    # --resume on a finished run: nothing to do; with other settings it refuses to replace it
    assert main(synth_args(seeds, tiny_policy_dir, c, *common, "--resume"))[0] == 0
    assert c.read_bytes() == a.read_bytes()
    code, _, err = main(synth_args(seeds, tiny_policy_dir, c, "--num", "5", "--seed", "7", "--resume"))
    assert code == 2 and "--overwrite" in _one_error_line(err) and c.read_bytes() == a.read_bytes()

    # another seed gives other prompts, and a resume with other settings is refused
    d = tmp_path / "d.jsonl"
    assert main(synth_args(seeds, tiny_policy_dir, d, "--num", "6", "--batch-size", "2", "--seed", "8"))[0] == 0
    assert d.read_bytes() != a.read_bytes()
    with make_backend("hf", str(tiny_policy_dir), device="cpu") as hf, pytest.raises(KeyboardInterrupt):
        run_synth(SynthConfig(**{**cfg.__dict__, "out": str(tmp_path / "e.jsonl")}), backend=_Interrupting(hf, 1))
    code, _, err = main(synth_args(seeds, tiny_policy_dir, tmp_path / "e.jsonl", "--num", "6", "--batch-size", "2",
                                   "--seed", "9", "--resume"))
    assert code == 2 and "other settings" in err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    return lines[-1]


@pytest.mark.parametrize("bad, needle", [
    ([{"id": "a", "prompt": "fine seed text"}, {"id": "b", "prompt": 3}], "seeds.jsonl:2: field 'prompt'"),
    ([{"id": "a", "prompt": "fine seed text"}, {"id": "a", "prompt": "again"}], "seeds.jsonl:2: field 'id'"),
    ([{"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
     "seeds.jsonl:1: field 'messages': a chat seed must end on a user turn"),
    ([{"id": "a", "prompt": "plain seed"}, {"id": "b", "messages": [{"role": "user", "content": "hi"}]}],
     "seeds.jsonl:2: field 'messages': seeds must all be of one kind"),
])
def test_bad_seeds_exit_2_with_one_line_and_leave_nothing(tmp_path, bad, needle):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", bad)
    out = tmp_path / "o" / "synth.jsonl"
    code, _, err = main(synth_args(seeds, tmp_path / "no-model", out, "--num", "2"))
    assert code == 2
    assert needle in _one_error_line(err)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_bad_template_and_settings_exit_2(tmp_path):
    seeds = seeds_file(tmp_path)
    tpl = tmp_path / "t.txt"
    tpl.write_text("no slot here")
    code, _, err = main(synth_args(seeds, tmp_path / "m", tmp_path / "o.jsonl", "--num", "2", "--template", str(tpl)))
    assert code == 2 and "needs {examples}" in _one_error_line(err)
    code, _, err = main(synth_args(seeds, tmp_path / "m", tmp_path / "o.jsonl", "--num", "2", "--max-similarity", "0"))
    assert code == 2 and "--max-similarity" in _one_error_line(err)
    with pytest.raises(ConfigError):
        FilterSettings(min_words=5, max_words=2).validate()
    assert not (tmp_path / "o.jsonl").exists()


# ------------------------------------------------------------------------------------ the openai backend


@pytest.fixture(scope="module")
def llm_server(tiny_tokenizer):
    from openai_gpt2_server import GPT2OpenAIServer

    from bonsynth.demo.models import tiny_causal_lm

    srv = GPT2OpenAIServer(tiny_causal_lm(tiny_tokenizer, seed=1), tiny_tokenizer, model_name="synth-lm").start()
    yield srv
    srv.stop()


def test_openai_backend_with_a_custom_template(tmp_path, llm_server, monkeypatch):
    """Through the served API: the user's template is what the model sees, canned answers are filtered and
    counted (one seed copy, one near-duplicate of an earlier answer), and the run is reproducible."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-synth")
    vocab = sorted({w for t in SEED_TEXTS for w in t.lower().rstrip(".?").split()} | set(WORDS))
    seen: list[str] = []

    def answer(body):
        content = body["messages"][-1]["content"]
        seen.append(content)
        k = body["seed"] % 10
        if k in (0, 4):
            return "Example 9: " + SEED_TEXTS[1].upper()  # a seed copy once the label is cut
        if k in (1, 2, 3):  # the first is kept, the later ones are near-duplicates of it
            return "Name four animals that live in the desert and how they find water."
        return " ".join(random.Random(body["seed"]).sample(vocab, 9)) + "?"

    llm_server.reset()
    llm_server.answer = answer
    tpl = tmp_path / "mine.txt"
    tpl.write_text("MY TEMPLATE. Seeds:\n{examples}\nOne more please:\n", encoding="utf-8")
    seeds = seeds_file(tmp_path)
    args = ["prompts", "synth", "--seeds", str(seeds), "--policy", "synth-lm", "--backend", "openai", "--base-url",
            llm_server.base_url, "--num", "12", "--template", str(tpl), "--shots", "2", "--quiet"]
    code, _, err = main([*args, "--out", str(tmp_path / "a.jsonl")])
    assert code == 0, err
    assert seen and all(s.startswith("MY TEMPLATE. Seeds:\nExample 1:\n") and "Example 2:" in s for s in seen)
    assert all(sum(t in s for t in SEED_TEXTS) == 2 for s in seen)
    manifest = json.loads((tmp_path / "a.manifest.json").read_text())
    assert manifest["template"] == {"path": str(tpl), "sha256": hashlib.sha256(tpl.read_bytes()).hexdigest()}
    assert manifest["backend"]["backend"] == "openai"
    counts = manifest["counts"]
    assert counts["accepted"] == 12 and counts["seed_copy"] >= 1 and counts["near_duplicate_synth"] >= 1
    texts = [r["prompt"] for r in rows(tmp_path / "a.jsonl")]
    assert dedup(texts, 0.7) == list(range(12)) and not set(texts) & set(SEED_TEXTS)
    code, _, err = main([*args, "--out", str(tmp_path / "b.jsonl")])
    assert code == 0, err
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
