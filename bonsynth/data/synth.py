"""Prompt synthesis, the data side: few-shot requests from seed prompts, and the filters a synthesised prompt
must pass (length, language, seed copy, near-duplicate).

The generation driver (`bonsynth.generate.synth`) samples the shots, calls a backend and feeds each candidate
through `SynthFilter` in order; everything here is model-free and deterministic.

Seeds are plain prompts (`prompt`) or chats (`messages`). A chat seed is its *context* (every message before
its last user turn, e.g. a system character card) plus that last user turn, its *example*. A synthesised chat
item is a new user turn for the card of the request's first shot: the context is kept as it is, so the new
prompt has the seed's structure (card + user turn) and can be answered by the same character.

Similarity is the Jaccard index of word n-gram sets (lower-cased words; n=2 by default: word pairs, which keep
some word order, as ROUGE-L does, and are not dominated by the function words every prompt shares, which with
word sets (n=1) make LSH flag many unrelated prompts at scale; `--ngram 1` uses word sets). A candidate
is dropped when its similarity to an earlier kept item (a seed or an accepted prompt) is >= `max_similarity`
(Self-Instruct's rule with ROUGE-L 0.7). MinHash LSH (`datasketch`) finds the candidate pairs in near-constant
time per prompt; each candidate pair is then checked with the exact Jaccard, so no prompt is ever dropped for a
similarity below the threshold. LSH can miss a pair: the bands are chosen so that a pair exactly at the
threshold is missed with probability <= 0.1% (less above it), see `lsh_params`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from bonsynth.data.records import Message, PromptRecord
from bonsynth.errors import ConfigError, InputError, io_errors
from bonsynth.settings import FieldError, check_declared, setting

TEMPLATES_DIR = Path(__file__).with_name("synth_prompts")
DEFAULT_TEMPLATES = {"text": "fewshot.txt", "chat": "fewshot_chat.txt"}
SLOTS = {"text": ("{examples}",), "chat": ("{examples}", "{card}")}

# Filter names, in the order a candidate meets them; each is a count in the manifest.
FILTERS = ("empty", "too_short", "too_long", "language", "seed_copy", "near_duplicate_seed", "near_duplicate_synth")

_WORD = re.compile(r"\w+", re.UNICODE)
_LABEL = re.compile(r"^\s*(?:(?:new\s+)?(?:example|prompt|message|instruction)(?:\s*\d+)?\s*[:.)-])\s*", re.I)
_NEXT_EXAMPLE = re.compile(r"\n\s*(?:example|prompt|message|instruction)\s*\d*\s*:", re.I)
_QUOTES = ('"', "'", "\u201c", "\u201d", "`")


# ----------------------------------------------------------------------------------------------- seeds


@dataclass(frozen=True)
class Seed:
    """One seed: its id, the text shown as an example, and (chat seeds) the messages before that text."""

    id: str
    text: str
    context: tuple[Message, ...] | None = None  # None: a plain prompt

    @property
    def card(self) -> str:
        """The character card (the system messages of the context), for the chat template."""
        return "\n".join(m["content"] for m in self.context or () if m["role"] == "system")


def seeds_from_records(records: Sequence[PromptRecord], path: str | Path) -> tuple[str, list[Seed]]:
    """The seed set and its kind ("text" or "chat"). All seeds must be of one kind, and a chat seed must end on
    a user turn (the turn synthesis imitates); errors name the seed's file, line and field."""
    if not records:
        raise InputError("no seed prompts", path=path)
    kind = "chat" if records[0].is_chat else "text"
    seeds = []
    for rec in records:
        line = rec.source.line if rec.source else None
        if rec.is_chat != (kind == "chat"):
            want = "'messages'" if kind == "chat" else "'prompt'"
            raise InputError(f"seeds must all be of one kind: the first is a {kind} seed, so this one needs {want}",
                             path=path, line=line, field="messages" if rec.is_chat else "prompt")
        if kind == "text":
            seeds.append(Seed(rec.id, rec.prompt.strip()))
            continue
        messages = rec.prompt
        if messages[-1]["role"] != "user":
            raise InputError(f"a chat seed must end on a user turn (the last is {messages[-1]['role']!r})",
                             path=path, line=line, field="messages")
        seeds.append(Seed(rec.id, messages[-1]["content"].strip(), tuple(dict(m) for m in messages[:-1])))
    for seed in seeds:
        if not seed.text:
            raise InputError("a seed needs a non-empty prompt to imitate", path=path,
                             line=_line_of(records, seed.id), field="messages" if kind == "chat" else "prompt")
    return kind, seeds


def _line_of(records: Sequence[PromptRecord], rid: str) -> int | None:
    rec = next(r for r in records if r.id == rid)
    return rec.source.line if rec.source else None


# ------------------------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Template:
    text: str
    path: str  # the user's file, or "(default text)" / "(default chat)"
    sha256: str


def load_template(kind: str, path: str | Path | None = None) -> Template:
    """The request template: the user's file, or the default shipped for this kind of seed; its slots checked."""
    file = Path(path) if path else TEMPLATES_DIR / DEFAULT_TEMPLATES[kind]
    if not file.is_file():
        raise ConfigError(f"--template {file}: no such file")
    with io_errors(file):
        raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"--template {file}: not UTF-8 text") from None
    missing = [s for s in SLOTS[kind] if s not in text]
    if missing:
        raise ConfigError(f"--template {file}: a template for {kind} seeds needs {' and '.join(missing)}")
    return Template(text, str(file) if path else f"(default {kind})", hashlib.sha256(raw).hexdigest())


def fill(template: str, **slots: str) -> str:
    """The template with its `{name}` slots filled in one pass (braces inside the texts stay as they are)."""
    return re.sub(r"\{(" + "|".join(map(re.escape, slots)) + r")\}", lambda m: slots[m.group(1)], template)


def build_request(template: Template, shots: Sequence[Seed]) -> str:
    """The few-shot request: the shots as numbered examples (and, for chat seeds, the first shot's card)."""
    examples = "\n\n".join(f"Example {i}:\n{s.text}" for i, s in enumerate(shots, 1))
    return fill(template.text, examples=examples, card=shots[0].card if shots else "")


def clean_candidate(text: str) -> str:
    """The new prompt in a model's answer: cut where a next example starts, drop a leading "Example N:" /
    "Prompt:" label and quotes around the whole answer. Nothing else is rewritten."""
    text = _LABEL.sub("", text.strip(), count=1)
    text = _NEXT_EXAMPLE.split(text, maxsplit=1)[0].strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


# --------------------------------------------------------------------------------------------- filters


def words(text: str) -> list[str]:
    """Lower-cased word tokens (Unicode letters and digits)."""
    return _WORD.findall(text.casefold())


def shingles(text: str, ngram: int = 1) -> frozenset[str]:
    """The set of word n-grams of `text` (n=1: its word set)."""
    toks = words(text)
    if ngram <= 1 or not toks:
        return frozenset(toks)
    return frozenset(" ".join(toks[i:i + ngram]) for i in range(max(1, len(toks) - ngram + 1)))


def jaccard(a: frozenset, b: frozenset) -> float:
    """|a & b| / |a | b|; two empty sets are 0 (nothing in common), not 1."""
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def copy_key(text: str) -> str:
    """What "an exact copy" compares: the text case-folded with its whitespace collapsed."""
    return " ".join(text.casefold().split())


@lru_cache(maxsize=65536)
def _script(ch: str) -> str:
    """The script of a letter, from its Unicode name ("LATIN SMALL LETTER A" -> LATIN, CJK ... -> CJK)."""
    try:
        return unicodedata.name(ch).split(" ", 1)[0]
    except ValueError:
        return "UNKNOWN"


def script_shares(text: str) -> Counter:
    """How many letters of each script `text` has."""
    return Counter(_script(ch) for ch in text if ch.isalpha())


@dataclass
class LanguageProfile:
    """A cheap "same language as the seeds" check, learnt from the seeds, no model and no word lists:

    1. script: at least `min_script_share` of a candidate's letters are in the seeds' main script (Latin,
       Cyrillic, CJK, ...), which catches a switch of script;
    2. function words: the words found in at least two seeds (or a quarter of them), the 100 most frequent,
       stand in for the language's stopwords; a candidate of `min_words_for_stopwords` words or more must use
       at least one of them, which catches a switch between languages of one script (English -> German).
       Fewer than 5 such words (too few or too varied seeds) turns this part off.
    """

    script: str | None
    stopwords: frozenset[str]
    min_script_share: float = 0.5
    min_words_for_stopwords: int = 6

    @classmethod
    def from_texts(cls, texts: Iterable[str], **kw) -> LanguageProfile:
        texts = list(texts)
        scripts: Counter = Counter()
        docs: Counter = Counter()
        for t in texts:
            scripts.update(script_shares(t))
            docs.update(set(words(t)))
        script = scripts.most_common(1)[0][0] if scripts else None
        need = max(2, len(texts) // 4)
        common = [w for w, c in docs.most_common() if c >= need][:100]
        return cls(script=script, stopwords=frozenset(common) if len(common) >= 5 else frozenset(), **kw)

    def accepts(self, text: str) -> bool:
        if self.script is not None:
            shares = script_shares(text)
            total = sum(shares.values())
            if total and shares[self.script] / total < self.min_script_share:
                return False
        toks = words(text)
        if self.stopwords and len(toks) >= self.min_words_for_stopwords:
            return any(t in self.stopwords for t in toks)
        return True

    def to_dict(self) -> dict:
        return {"script": self.script, "stopwords": len(self.stopwords), "min_script_share": self.min_script_share,
                "min_words_for_stopwords": self.min_words_for_stopwords}


# ----------------------------------------------------------------------------------------------- dedup


def lsh_params(threshold: float, num_perm: int, max_miss: float = 1e-3) -> tuple[int, int]:
    """LSH bands b and rows r (b*r <= num_perm): the largest r (fewest false candidates, each verified exactly
    anyway) whose chance of missing a pair at exactly `threshold`, (1 - t^r)^b, is <= `max_miss`."""
    best = (num_perm // 2, 2) if num_perm >= 4 else (2, 1)
    for r in range(1, num_perm // 2 + 1):
        b = num_perm // r
        if (1 - threshold ** r) ** b <= max_miss:
            best = (b, r)
    return best


class NearDupIndex:
    """Kept texts, indexed for "is this new text too similar to one of them?" (MinHash LSH + exact Jaccard).

    Keys are the caller's (e.g. ("seed", i)); `find` returns the first kept key, in insertion order, whose exact
    Jaccard with the text is >= the threshold, so the result does not depend on LSH's bucket order.
    """

    def __init__(self, threshold: float, *, num_perm: int = 128, ngram: int = 2, seed: int = 1) -> None:
        from datasketch import MinHash, MinHashLSH

        if not 0 < threshold <= 1:
            raise ConfigError(f"--max-similarity must be in (0, 1] (got {threshold})")
        self.threshold = threshold
        self.ngram = ngram
        self.num_perm = num_perm
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self._proto = MinHash(num_perm=num_perm, seed=seed)
        self._lsh = MinHashLSH(num_perm=num_perm, params=(self.bands, self.rows))
        self._sets: dict[int, frozenset] = {}
        self._keys: list = []
        self.candidates_checked = 0

    def _minhash(self, items: frozenset):
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, permutations=self._proto.permutations, scheme=self._proto.scheme,
                    hashfunc=self._proto.hashfunc)
        m.update_batch([s.encode("utf-8") for s in items])
        return m

    def find(self, text: str):
        """(key of the first kept item at or above the threshold or None, the text's set, its MinHash)."""
        items = shingles(text, self.ngram)
        mh = self._minhash(items)
        if not items:
            return None, items, mh
        hits = sorted(self._lsh.query(mh))
        self.candidates_checked += len(hits)
        for slot in hits:
            if jaccard(items, self._sets[slot]) >= self.threshold:
                return self._keys[slot], items, mh
        return None, items, mh

    def insert(self, key, items: frozenset, mh) -> None:
        slot = len(self._keys)
        self._keys.append(key)
        self._sets[slot] = items
        if items:
            self._lsh.insert(slot, mh)

    def add(self, key, text: str):
        """Insert `text` unless it is a near-duplicate; returns the key it duplicates, or None (inserted)."""
        dup, items, mh = self.find(text)
        if dup is None:
            self.insert(key, items, mh)
        return dup

    def __len__(self) -> int:
        return len(self._keys)


def dedup(texts: Sequence[str], threshold: float, **kw) -> list[int]:
    """Indices of the texts kept by greedy near-duplicate removal (first occurrence wins), with `NearDupIndex`."""
    index = NearDupIndex(threshold, **kw)
    return [i for i, t in enumerate(texts) if index.add(i, t) is None]


def dedup_exact(texts: Sequence[str], threshold: float, ngram: int = 2) -> list[int]:
    """The same greedy rule by comparing every text with every kept one (quadratic: the reference and the
    benchmark baseline)."""
    kept: list[tuple[int, frozenset]] = []
    for i, t in enumerate(texts):
        items = shingles(t, ngram)
        if items and any(jaccard(items, other) >= threshold for _, other in kept):
            continue
        kept.append((i, items))
    return [i for i, _ in kept]


# -------------------------------------------------------------------------------------------- pipeline


@dataclass
class FilterSettings:
    """The filters' thresholds (`prompts synth` options, the recipe's `synth` section), checked when built."""

    max_similarity: float = setting(0.7, gt=0, le=1, help="Drop a prompt whose Jaccard similarity (word --ngram sets) with a seed "
                                              "or an earlier kept prompt is >= this.")
    ngram: int = setting(2, ge=1, help="Word n-grams for the similarity (2 = word pairs; 1 = word sets).")
    min_words: int = setting(3, ge=0, help="Drop prompts with fewer words.")
    max_words: int = setting(256, ge=1, help="Drop prompts with more words.")
    num_perm: int = setting(128, ge=1, cli=False)  # MinHash permutations
    language_check: bool = setting(True, flag="--no-language-check", invert=True,
                                   help="Keep prompts that fail the cheap same-language-as-the-seeds check.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """A bad threshold is a `FieldError` naming the field (the CLI names the flag)."""
        check_declared(self)
        if self.min_words > self.max_words:
            raise FieldError(f"`min_words`/`max_words` must satisfy 0 <= min <= max, max >= 1 "
                             f"(got {self.min_words} and {self.max_words})")


@dataclass
class SynthFilter:
    """Every check a candidate goes through, in order, with a count per filter. The seeds are in the
    near-duplicate index from the start; an accepted candidate is added to it (`accept` returns None)."""

    seeds: Sequence[Seed]
    settings: FilterSettings = field(default_factory=FilterSettings)

    def __post_init__(self) -> None:
        self.settings.validate()
        s = self.settings
        self.profile = LanguageProfile.from_texts(seed.text for seed in self.seeds)
        self.copies = {copy_key(seed.text) for seed in self.seeds}
        self.index = NearDupIndex(s.max_similarity, num_perm=s.num_perm, ngram=s.ngram)
        for i, seed in enumerate(self.seeds):
            items = shingles(seed.text, s.ngram)
            self.index.insert(("seed", i), items, self.index._minhash(items))
        self.counts: Counter = Counter({name: 0 for name in FILTERS})
        self.accepted = 0

    def reason(self, text: str) -> str | None:
        """Why `text` is dropped (a name in FILTERS), or None when it passes; an accepted text is indexed."""
        s = self.settings
        if not text.strip():
            return "empty"
        n = len(words(text))
        if n < s.min_words:
            return "too_short"
        if n > s.max_words:
            return "too_long"
        if s.language_check and not self.profile.accepts(text):
            return "language"
        if copy_key(text) in self.copies:
            return "seed_copy"
        dup, items, mh = self.index.find(text)
        if dup is not None:
            return "near_duplicate_seed" if dup[0] == "seed" else "near_duplicate_synth"
        self.index.insert(("synth", self.accepted), items, mh)
        return None

    def accept(self, text: str) -> str | None:
        """`reason`, counted."""
        why = self.reason(text)
        if why is None:
            self.accepted += 1
        else:
            self.counts[why] += 1
        return why

    def restore(self, text: str) -> None:
        """Put back an item accepted before a resume (indexed as accepted, without checking it again)."""
        items = shingles(text, self.settings.ngram)
        self.index.insert(("synth", self.accepted), items, self.index._minhash(items))
        self.accepted += 1

    def describe(self) -> dict:
        s = self.settings
        return {"min_words": s.min_words, "max_words": s.max_words, "max_similarity": s.max_similarity,
                "similarity": f"jaccard of word {s.ngram}-gram sets", "num_perm": s.num_perm,
                "lsh_bands": self.index.bands, "lsh_rows": self.index.rows,
                "language": self.profile.to_dict() if s.language_check else None}
