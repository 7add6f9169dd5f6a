"""Prefix-shared scoring gives the plain path's rewards (within 1e-4), in input order, for GPT-2 and Llama RMs,
plain and chat prompts, any token budget; truncated items, whole texts and encoder RMs take the plain path."""

from __future__ import annotations

import copy
import random

import pytest

torch = pytest.importorskip("torch")

from bonsynth.demo.models import EOS, tiny_reward_model, train_tokenizer  # noqa: E402
from bonsynth.errors import BonsynthError, ConfigError  # noqa: E402
from bonsynth.rm import prefix as prefix_mod  # noqa: E402
from bonsynth.rm.ensemble import RewardEnsemble  # noqa: E402
from bonsynth.rm.model import RewardModel  # noqa: E402
from bonsynth.rm.prefix import (  # noqa: E402
    UnsupportedCache,
    group_by_prompt,
    plan_prompt_batches,
    plan_response_batches,
)

WORDS = "the captain ship sails storm sea crew gold map island wizard spell tower potion knight dragon".split()
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads cost more than they save


def words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


@pytest.fixture(scope="module")
def tok():
    rng = random.Random(0)
    return train_tokenizer([words(rng, 3, 30) for _ in range(200)], vocab_size=300)


@pytest.fixture(scope="module")
def chat_tok(tok):
    """Llama-style: the tokenizer adds a BOS, and a chat template that writes one as well."""
    from tokenizers.processors import TemplateProcessing

    t = copy.deepcopy(tok)
    bos = t.convert_tokens_to_ids(EOS)
    t._tokenizer.post_processor = TemplateProcessing(single=f"{EOS} $A", special_tokens=[(EOS, bos)])
    t.chat_template = (
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return t


def tiny_llama(tokenizer, num_labels: int = 1, seed: int = 0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForSequenceClassification(cfg).eval()


def best_of_n_items(seed: int, n_prompts: int = 6, n: int = 4, chat: bool = False) -> list:
    """N responses per prompt, mixed prompt and response lengths, shuffled (order must still hold)."""
    rng = random.Random(seed)
    items = []
    for k in range(n_prompts):
        text = words(rng, 1, 40)
        prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}] if chat and k % 2 else text
        items += [(prompt, " " + words(rng, 1, 25)) for _ in range(n)]
    items.append(("a lonely prompt", " with one response"))
    rng.shuffle(items)
    return items


def check_shared(rm: RewardModel, items: list, budgets=(40, 120, 100_000)) -> None:
    plain = rm.score(items, prefix_sharing=False)
    assert rm.last_stats["num_shared_items"] == 0
    for budget in budgets:
        shared = rm.score(items, token_budget=budget)
        assert shared == pytest.approx(plain, abs=TOL)
        assert rm.last_stats["prefix_sharing"] == "on"
        assert rm.last_stats["num_shared_items"] == len(items) - 1  # the lonely prompt is not shared ("auto")
    assert rm.score(items[::-1]) == pytest.approx(plain[::-1], abs=TOL)


@pytest.mark.parametrize("num_labels", [1, 2])
def test_gpt2_shared_equals_plain(tok, num_labels):
    rm = RewardModel.from_model(tiny_reward_model(tok, num_labels=num_labels, seed=num_labels).eval(), tok)
    check_shared(rm, best_of_n_items(num_labels, chat=True))
    assert rm.last_stats["num_shared_tokens_run"] < rm.last_stats["num_tokens"]


@pytest.mark.parametrize("chat", [False, True])
def test_llama_shared_equals_plain_with_bos_and_chat_template(chat_tok, chat):
    rm = RewardModel.from_model(tiny_llama(chat_tok, seed=3), chat_tok)
    items = best_of_n_items(7, chat=chat)
    enc = rm.encode(items)
    assert all(e.prefix == [chat_tok.bos_token_id] and e.input_ids.count(chat_tok.bos_token_id) == 1 for e in enc)
    check_shared(rm, items)


def test_always_on_shares_single_responses_and_texts_stay_plain(tok):
    rm = RewardModel.from_model(tiny_llama(tok, num_labels=2, seed=4), tok, prefix_sharing=True)
    items = [(words(random.Random(i), 2, 30), " " + words(random.Random(i + 50), 1, 20)) for i in range(9)]
    plain = rm.score(items, prefix_sharing="off")
    assert rm.score(items) == pytest.approx(plain, abs=TOL)
    assert rm.last_stats["num_shared_items"] == len(items)
    texts = [p + r for p, r in items]
    assert rm.score(texts) == pytest.approx(rm.score(texts, prefix_sharing=False), abs=TOL)
    assert rm.last_stats["num_shared_items"] == 0


def test_truncated_items_take_the_plain_path(tok):
    rm = RewardModel.from_model(tiny_reward_model(tok, num_labels=1, seed=5).eval(), tok, max_length=24)
    long_prompt, short_prompt = "sea " * 40, "the ship"
    items = [(long_prompt, " gold map"), (long_prompt, " wizard"), (short_prompt, " crew"), (short_prompt, " tower")]
    items.append((short_prompt, " " + "dragon " * 40))  # a response longer than max_length on its own
    plain = rm.score(items, prefix_sharing=False)
    assert rm.score(items) == pytest.approx(plain, abs=TOL)
    assert rm.last_stats["num_truncated"] == 3 and rm.last_stats["num_shared_items"] == 2


def test_pad_equal_to_eos_reads_the_real_last_token(tok):
    model = tiny_reward_model(tok, num_labels=1, seed=6).eval()
    model.config.pad_token_id = tok.eos_token_id
    rm = RewardModel.from_model(model, tok)
    items = [("the captain", " sails" + EOS), ("the captain", " sails the sea" + EOS), ("the captain", " crew")]
    plain = rm.score(items, prefix_sharing=False)
    assert rm.score(items) == pytest.approx(plain, abs=TOL)
    assert rm.last_stats["num_shared_items"] == 3


def test_encoder_rm_falls_back_in_auto_and_is_refused_when_on(tok, caplog):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=1, pad_token_id=tok.pad_token_id)
    model = BertForSequenceClassification(cfg).eval()
    with pytest.raises(ConfigError, match=r"--prefix-sharing on: reward model BertForSequenceClassification .*encoder"):
        RewardModel.from_model(model, tok, prefix_sharing=True)
    rm = RewardModel.from_model(model, tok)
    assert rm.prefix_blocker() is not None
    items = best_of_n_items(9, n_prompts=3)
    with caplog.at_level("WARNING", logger="bonsynth.rm.model"):
        got = rm.score(items)
        rm.score(items)
    assert [r.getMessage() for r in caplog.records if "prefix sharing" in r.getMessage()] == [
        "prefix sharing off: no per-token score head (encoder-style classifier) for reward model "
        "BertForSequenceClassification; scoring every pair in full"]  # once per model, not per call
    assert rm.last_stats["num_shared_items"] == 0 and rm.last_stats["prefix_sharing"].startswith("off")
    assert got == pytest.approx(rm.score(items, prefix_sharing=False), abs=1e-6)
    assert rm.describe()["prefix_sharing"] == {
        "requested": "auto", "active": False, "reason": "no per-token score head (encoder-style classifier)"}
    with pytest.raises(ConfigError, match="encoder-style"):
        rm.score(items, prefix_sharing="on")


class _Renamed(torch.nn.Module):
    """The installed backbone behind the other transformers release's cache argument (and output field)."""

    def __init__(self, inner, name: str) -> None:
        super().__init__()
        self.inner, self.name = inner, name
        self.real = prefix_mod.cache_argument(inner)

    def call(self, cache, kw):
        from types import SimpleNamespace

        out = self.inner(**kw, **({} if cache is None else {self.real: cache}))
        return SimpleNamespace(last_hidden_state=out.last_hidden_state, **{self.name: prefix_mod._output_cache(out)})


class _OldNames(_Renamed):  # transformers <= 5.2x
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
        kw = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache)
        return self.call(past_key_values, kw)


class _NewNames(_Renamed):  # later releases
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None):
        kw = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache)
        return self.call(cache, kw)


@pytest.mark.parametrize("backbone", [_OldNames, _NewNames])
def test_both_cache_argument_names_share_exactly(tok, backbone):
    """transformers 5.24 renamed the backbone's `past_key_values` to `cache`; both must share, not fall back."""
    from types import SimpleNamespace

    rm = RewardModel.from_model(tiny_reward_model(tok, num_labels=1, seed=12).eval(), tok)
    items = best_of_n_items(17)
    plain = rm.score(items, prefix_sharing=False)
    base = backbone(rm.model.base_model, "past_key_values" if backbone is _OldNames else "cache")
    assert prefix_mod.cache_argument(base) == base.name
    fake = SimpleNamespace(config=rm.model.config, base_model=base)
    assert prefix_mod.prefix_support(fake, rm._pooler.head) is None
    enc = rm.encode(items)
    groups, rest = group_by_prompt(enc, min_members=2)
    got = dict(zip(rest, rm.score([items[i] for i in rest], prefix_sharing=False), strict=True))
    with torch.inference_mode():
        for idx, rewards, _ in prefix_mod.iter_shared_rewards(
            fake, rm._pooler.head, enc, groups, 120, rm.pad_id, rm.device, rm._rewards_of
        ):
            got.update(zip(idx, rewards, strict=True))
    assert [got[i] for i in range(len(items))] == pytest.approx(plain, abs=TOL)


def test_installed_transformers_backbones_share(tok, chat_tok):
    """The installed release's GPT-2 and Llama backbones take a cache under a name this engine knows."""
    for model in (tiny_reward_model(tok, num_labels=1).eval(), tiny_llama(chat_tok)):
        assert prefix_mod.cache_argument(model.base_model) in prefix_mod.CACHE_ARGUMENTS
        assert RewardModel.from_model(model, tok).describe()["prefix_sharing"] == {
            "requested": "auto", "active": True, "reason": None}


def test_an_unknown_cache_argument_warns_in_auto_and_is_an_error_when_on(tok, monkeypatch, caplog):
    """What a future rename looks like: `auto` says so on stderr and in describe(), `on` refuses."""
    model = tiny_reward_model(tok, num_labels=1, seed=13).eval()
    monkeypatch.setattr(prefix_mod, "CACHE_ARGUMENTS", ("kv_state",))
    with pytest.raises(ConfigError, match=r"reward model GPT2ForSequenceClassification .*GPT2Model\.forward takes no KV"):
        RewardModel.from_model(model, tok, prefix_sharing="on")
    rm = RewardModel.from_model(model, tok)
    report = rm.describe()["prefix_sharing"]
    assert report["requested"] == "auto" and report["active"] is False and "kv_state" in report["reason"]
    items = best_of_n_items(19)
    with caplog.at_level("WARNING", logger="bonsynth.rm.model"):
        rm.score(items)
    assert any("prefix sharing off: backbone GPT2Model.forward" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="bonsynth.rm.model"):
        rm.score([("one prompt", " one response")])  # nothing to share: nothing to warn about
    assert not caplog.records
    off = RewardModel.from_model(model, tok, prefix_sharing="off").describe()["prefix_sharing"]
    assert off == {"requested": "off", "active": False, "reason": "requested off"}


def test_on_refuses_a_run_time_fallback(tok, monkeypatch):
    items = best_of_n_items(21)
    rm = RewardModel.from_model(tiny_reward_model(tok, num_labels=1, seed=14).eval(), tok, prefix_sharing=True)

    def no_cache(*_a, **_k):
        raise UnsupportedCache("test: no cache")

    monkeypatch.setattr(prefix_mod, "_prompt_kv", no_cache)
    with pytest.raises(ConfigError, match=r"--prefix-sharing on: .*\(test: no cache\)"):
        rm.score(items)
    assert rm.describe()["prefix_sharing"] == {"requested": "on", "active": False, "reason": "test: no cache"}


def test_a_mismatch_or_an_unusable_cache_switches_sharing_off(tok, monkeypatch):
    items = best_of_n_items(11)
    rm = RewardModel.from_model(tiny_reward_model(tok, num_labels=1, seed=7).eval(), tok)
    plain = rm.score(items, prefix_sharing=False)
    real = prefix_mod._response_pass
    monkeypatch.setattr(prefix_mod, "_response_pass", lambda *a, **k: real(*a, **k) + 1.0)  # a broken engine
    assert rm.score(items) == pytest.approx(plain, abs=TOL)
    assert rm.last_stats["prefix_sharing"].startswith("off: shared rewards differ")
    assert rm.prefix_blocker() is not None
    assert rm.describe()["prefix_sharing"]["active"] is False  # what ran, not what was asked for
    monkeypatch.setattr(prefix_mod, "_response_pass", real)

    rm2 = RewardModel.from_model(tiny_reward_model(tok, num_labels=1, seed=7).eval(), tok)

    def no_cache(*_a, **_k):
        raise UnsupportedCache("test: no cache")

    monkeypatch.setattr(prefix_mod, "_prompt_kv", no_cache)
    assert rm2.score(items) == pytest.approx(plain, abs=TOL)
    assert rm2.last_stats["prefix_sharing"] == "off: test: no cache"


def test_ensemble_routes_pairs_through_sharing(tok):
    rm = RewardModel.from_model(tiny_reward_model(tok, num_labels=1, seed=8).eval(), tok)
    items = best_of_n_items(13)
    prompts, responses = [p for p, _ in items], [r for _, r in items]
    got = RewardEnsemble([rm], ["rm"]).score(prompts, responses).combined
    assert rm.last_stats["num_shared_items"] == len(items) - 1
    assert got == pytest.approx(rm.score(items, prefix_sharing=False), abs=TOL)


def test_plans_cover_every_item_within_budget(tok):
    rm = RewardModel.from_model(tiny_reward_model(tok, num_labels=1, seed=9).eval(), tok)
    enc = rm.encode(best_of_n_items(15, n_prompts=10, n=3))
    groups, rest = group_by_prompt(enc, min_members=2)
    assert sorted(rest + [i for g in groups for i in g.members]) == list(range(len(enc)))
    for budget in (1, 50, 400, 10_000):
        batches = plan_prompt_batches(groups, budget)
        assert sorted(g for b in batches for g in b) == list(range(len(groups)))
        for b in batches:
            width = max(len(groups[g].shared) for g in b)
            assert len(b) == 1 or len(b) * width <= max(1, budget // prefix_mod.PROMPT_BUDGET_SHARE)
    tails = [3, 9, 1, 4, 4, 12, 7]
    for budget in (1, 30, 100, 10_000):
        batches = plan_response_batches(tails, 5, budget)
        assert sorted(r for b in batches for r in b) == list(range(len(tails)))
        assert all(len(b) == 1 or len(b) * (5 + max(tails[r] for r in b)) <= budget for b in batches)


def test_bad_mode_is_refused(tok):
    with pytest.raises(BonsynthError, match="prefix_sharing"):
        RewardModel.from_model(tiny_reward_model(tok).eval(), tok, prefix_sharing="sometimes")
