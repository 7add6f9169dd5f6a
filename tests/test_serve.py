"""`bonsynth serve` (issue 15): the official openai client against live servers on 127.0.0.1.

One in-process uvicorn server per configuration, per module; the auth, batching and overload servers reuse
the main server's loaded engines. The upstream and SIGTERM tests front `openai_gpt2_server.GPT2OpenAIServer`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import REPO, run_bonsynth
from openai_gpt2_server import GPT2OpenAIServer
from serve_live import live_server

from bonsynth.errors import ConfigError
from bonsynth.generate.backends.base import GenerationBackend
from bonsynth.serve import ServeConfig, create_app

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = "sk-serve-test-NEVER-LOG-5d2e81"
CHAT = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "tell me about the sea"}]


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cfg(tiny_policy_dir, tiny_rm_dir) -> ServeConfig:
    return ServeConfig(policy=str(tiny_policy_dir), rewards=[str(tiny_rm_dir)], n=4, max_n=8, model_name="tiny",
                       max_tokens=10, max_body_bytes=64 * 1024)


@pytest.fixture(scope="module")
def main_app(cfg):
    return create_app(cfg)  # loads the engines from the config, as the CLI does


@pytest.fixture(scope="module")
def base(main_app):
    with live_server(main_app) as url:
        yield url


@pytest.fixture(scope="module")
def engines(main_app):
    service = main_app.state.service
    return service.backend, service.scorer


@pytest.fixture(scope="module")
def rm(tiny_rm_dir):
    from bonsynth.rm.model import RewardModel

    return RewardModel.load(str(tiny_rm_dir), device="cpu")


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def assert_openai_error(resp: httpx.Response, status: int, code: str, *, param: str | None = None,
                        says: str = "") -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "code"}
    assert err["code"] == code and isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param
    assert says in err["message"]
    return err


def argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


# ---------------------------------------------------------------------- config and CLI


def test_config_validates_on_construction_naming_the_field(tiny_policy_dir, tiny_rm_dir):
    """The library names the field (`max_n`), `bonsynth serve` the flag (`--max-n`), from one message."""
    ok = {"policy": str(tiny_policy_dir), "rewards": [str(tiny_rm_dir)]}
    cases = [({"n": 0}, "n must be >= 1", ["--n", "0"], "--n must be >= 1"),
             ({"n": 9, "max_n": 8}, "n 9 is above max_n 8", ["--n", "9", "--max-n", "8"], "--n 9 is above --max-n 8"),
             ({"backend": "tgi"}, "backend must be hf, vllm or openai", None, None),
             ({"backend": "openai"}, "backend openai needs base_url", ["--backend", "openai"],
              "--backend openai needs --base-url"),
             ({"port": 70000}, "port must be in [0, 65535]", ["--port", "70000"], "--port must be in [0, 65535]"),
             ({"batch_wait_ms": -1}, "batch_wait_ms must be in [0, 1000]", ["--batch-wait-ms", "-1"],
              "--batch-wait-ms must be in [0, 1000]"),
             ({"reward_weights": [1.0]}, "reward_weights needs two or more rewards", ["--reward-weights", "1"],
              "--reward-weights needs two or more --reward models"),
             ({"top_p": 0}, "top_p must be in (0, 1]", ["--top-p", "0"], "--top-p must be in (0, 1]"),
             ({"max_pending": 0}, "max_pending must be >= 1", ["--max-pending", "0"], "--max-pending must be >= 1"),
             ({"max_batch_requests": 0}, "max_batch_requests must be >= 1", ["--max-batch", "0"],
              "--max-batch must be >= 1"),
             ({"temperature": 2.5}, "temperature must be in [0, 2]", ["--temperature", "2.5"],
              "--temperature must be in [0, 2]")]
    for bad, says, argv, flag_says in cases:
        with pytest.raises(ConfigError) as e:
            ServeConfig(**ok, **bad)
        assert says in str(e.value) and "--" not in str(e.value), (bad, str(e.value))
        if argv is not None:
            code, _, err = run_bonsynth(["serve", "--policy", ok["policy"], "--reward", ok["rewards"][0], *argv])
            assert code == 2 and err.strip().count("\n") == 0 and flag_says in err and "Traceback" not in err, err


def test_cli_user_errors_are_one_line_exit_2(tiny_policy_dir, tiny_rm_dir, tmp_path):
    code, out, err = run_bonsynth(["serve", "--policy", "m", "--reward", str(tiny_rm_dir), "--backend", "openai"])
    assert code == 2 and err.strip().count("\n") == 0 and "--base-url" in err and "Traceback" not in err
    code, _, err = run_bonsynth(["serve", "--policy", str(tiny_policy_dir), "--reward", str(tmp_path / "nope"),
                                 "--port", "0"])
    assert code == 2 and err.startswith("error: ") and "nope" in err and err.strip().count("\n") == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_bonsynth(["serve", "--policy", str(tiny_policy_dir), "--reward", str(tiny_rm_dir),
                                     "--port", str(port)])
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and err.strip().count("\n") == 0


# ---------------------------------------------------------------------- the answer is the RM's argmax


def test_chat_answer_is_the_rm_argmax_rescored_independently(base, rm):
    resp = client(base).chat.completions.create(model="tiny", messages=CHAT, max_tokens=10, seed=11,
                                                extra_body={"best_of": 4, "return_candidates": True})
    extra = resp.model_extra["bonsynth"]
    cands = extra["candidates"]
    assert len(cands) == 4 and len(resp.choices) == 1 and resp.object == "chat.completion"
    rescored = rm.score([(CHAT, c["text"]) for c in cands])  # our own scoring, outside the server
    best = argmax(rescored)
    assert resp.choices[0].message.content == cands[best]["text"]
    assert extra["candidate_index"] == [best]
    assert extra["rewards"][0] == pytest.approx(rescored[best], rel=1e-4, abs=1e-5)
    for c, r in zip(cands, rescored, strict=True):
        assert c["reward"] == pytest.approx(r, rel=1e-4, abs=1e-5)
    assert resp.usage.completion_tokens == sum(c["num_tokens"] for c in cands)


def test_completions_best_n_highest_reward_first(base, rm):
    prompt = "the captain sails the ship"
    resp = client(base).completions.create(model="tiny", prompt=prompt, n=2, max_tokens=8, seed=5,
                                           extra_body={"best_of": 5, "return_candidates": True})
    cands = resp.model_extra["bonsynth"]["candidates"]
    rescored = rm.score([(prompt, c["text"]) for c in cands])
    order = sorted(range(len(cands)), key=lambda i: (-rescored[i], i))
    assert [c.text for c in resp.choices] == [cands[i]["text"] for i in order[:2]]
    rewards = resp.model_extra["bonsynth"]["rewards"]
    assert rewards == sorted(rewards, reverse=True) and len(rewards) == 2
    assert resp.object == "text_completion" and all(c.finish_reason in ("stop", "length") for c in resp.choices)


def test_streaming_sends_the_chosen_answer(base):
    c = client(base)
    plain = c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=10, seed=21)
    chunks = list(c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=10, seed=21, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content
    assert len([ch for ch in chunks if ch.choices]) >= 3  # role, pieces, finish
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].model_extra["bonsynth"]["rewards"] == plain.model_extra["bonsynth"]["rewards"]

    plain = c.completions.create(model="tiny", prompt="the wizard", max_tokens=10, seed=22, n=2,
                                 extra_body={"best_of": 3})
    chunks = list(c.completions.create(model="tiny", prompt="the wizard", max_tokens=10, seed=22, n=2,
                                       extra_body={"best_of": 3}, stream=True))
    for i in range(2):
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices and ch.choices[0].index == i)
        assert text == plain.choices[i].text


def test_seeded_request_is_reproducible_whatever_else_is_in_flight(base):
    body = {"model": "tiny", "prompt": "the dragon and the knight", "max_tokens": 10, "seed": 99,
            "temperature": 0.9, "top_p": 0.95, "return_candidates": True}
    alone = httpx.post(f"{base}/v1/completions", json=body, timeout=120).json()

    async def crowd() -> list[dict]:
        async with httpx.AsyncClient(timeout=120) as ac:
            others = [ac.post(f"{base}/v1/completions", json={**body, "prompt": f"robot {i} coffee", "seed": i})
                      for i in range(5)]
            rs = await asyncio.gather(ac.post(f"{base}/v1/completions", json=body), *others)
            return [r.json() for r in rs]

    together = asyncio.run(crowd())
    assert together[0]["choices"][0]["text"] == alone["choices"][0]["text"]
    assert [c["text"] for c in together[0]["bonsynth"]["candidates"]] == \
           [c["text"] for c in alone["bonsynth"]["candidates"]]
    unseeded = [httpx.post(f"{base}/v1/completions", json={k: v for k, v in body.items() if k != "seed"},
                           timeout=120).json()["bonsynth"]["candidates"][0]["text"] for _ in range(2)]
    assert len({*unseeded}) == 2  # no seed: fresh samples each time


def test_stop_and_max_tokens_are_honoured(base):
    resp = client(base).completions.create(model="tiny", prompt="the sea", max_tokens=6, seed=3,
                                           extra_body={"return_candidates": True})
    assert all(c["num_tokens"] <= 6 for c in resp.model_extra["bonsynth"]["candidates"])
    texts = [c["text"] for c in resp.model_extra["bonsynth"]["candidates"]]
    letter = next(ch for t in texts for ch in t if ch.isalpha())  # a letter some candidate contains
    resp = client(base).completions.create(model="tiny", prompt="the sea", max_tokens=6, seed=3, stop=[letter],
                                           extra_body={"return_candidates": True})
    assert all(letter not in c["text"] for c in resp.model_extra["bonsynth"]["candidates"])


def test_models_health_metrics(base):
    models = client(base).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert httpx.get(f"{base}/health").json()["status"] == "ok"
    client(base).completions.create(model="tiny", prompt="hello", max_tokens=4)
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("bonsynth_serve_requests", "bonsynth_serve_errors", "bonsynth_serve_request_latency_seconds",
                 "bonsynth_serve_candidates_scored", "bonsynth_serve_rm_batch_candidates"):
        assert name in fams, name
    ok = [s for s in fams["bonsynth_serve_requests"].samples
          if s.labels.get("endpoint") == "/v1/completions" and s.labels.get("status") == "200"]
    assert ok and ok[0].value >= 1
    scored = [s for s in fams["bonsynth_serve_candidates_scored"].samples if s.name.endswith("_total")]
    assert scored[0].value >= 4


# ---------------------------------------------------------------------- errors


def test_errors_are_openai_shaped_with_the_right_status(base):
    url = f"{base}/v1/completions"

    def post(body, **kw) -> httpx.Response:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx.post(url, content=content, headers={"content-type": "application/json"}, timeout=60, **kw)

    assert_openai_error(post(b"{not json"), 400, "invalid_json")
    assert_openai_error(post(b"[1, 2]"), 400, "invalid_json")
    assert_openai_error(post({"model": "tiny"}), 400, "missing_field", param="prompt")
    assert_openai_error(httpx.post(f"{base}/v1/chat/completions", json={"model": "tiny"}), 400, "missing_field",
                        param="messages")
    assert_openai_error(httpx.post(f"{base}/v1/chat/completions", json={"messages": [{"role": "user",
                                                                                      "content": 5}]}),
                        400, "invalid_type", says="messages[0].content")
    assert_openai_error(post({"prompt": "x", "max_tokens": "16"}), 400, "invalid_type", param="max_tokens")
    assert_openai_error(post({"prompt": "x", "temperature": 7}), 400, "invalid_value", param="temperature")
    assert_openai_error(post({"prompt": "x", "n": 3, "best_of": 2}), 400, "invalid_value", param="n",
                        says="must not exceed best_of (2)")
    assert_openai_error(post({"prompt": "x", "n": 5}), 400, "invalid_value", param="n")  # best_of defaults to --n 4
    assert_openai_error(post({"prompt": "x", "best_of": 9}), 400, "invalid_value", param="best_of",
                        says="limit of 8")
    assert_openai_error(post({"prompt": "x", "logprobs": 2}), 400, "unsupported", param="logprobs")
    assert_openai_error(post({"prompt": "x", "model": "gpt-4"}), 404, "model_not_found", param="model")
    # too long for the context: 400 naming the limit
    assert_openai_error(post({"prompt": "the " * 700}), 400, "context_length_exceeded",
                        says="context of 512 tokens")
    assert_openai_error(post({"prompt": "x", "max_tokens": 600}), 400, "context_length_exceeded",
                        says="context of 512 tokens")
    # body size cap (64 KiB here), with and without a declared length
    assert_openai_error(post({"prompt": "x" * 70_000}), 413, "body_too_large", says="65536 bytes")

    def chunked():
        yield b'{"prompt": "'
        for _ in range(80):
            yield b"y" * 1024
        yield b'"}'

    assert_openai_error(httpx.post(url, content=chunked(), headers={"content-type": "application/json"}), 413,
                        "body_too_large")
    assert httpx.get(f"{base}/nope").json()["error"]["code"] == "404"
    # and the server still answers
    assert client(base).completions.create(model="tiny", prompt="still up", max_tokens=3).choices


class SlowBackend(GenerationBackend):
    """The real hf backend, slowed down, so requests pile up."""

    name = "hf"

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay, self.model = inner, delay, inner.model

    def generate(self, prompts, sampling):
        time.sleep(self.delay)
        return self.inner.generate(prompts, sampling)


def test_overloaded_queue_gives_503_and_recovers(cfg, engines):
    import dataclasses

    backend, scorer = engines
    small = dataclasses.replace(cfg, max_pending=2, max_batch_requests=1)
    with live_server(create_app(small, backend=SlowBackend(backend, 0.5), scorer=scorer)) as url:
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as ac:
                return list(await asyncio.gather(*[ac.post(f"{url}/v1/completions", json={"prompt": f"p{i}",
                                                                                         "max_tokens": 3})
                                                   for i in range(6)]))

        statuses = [r.status_code for r in asyncio.run(burst())]
        assert statuses.count(200) >= 2 and statuses.count(503) >= 1 and set(statuses) <= {200, 503}, statuses
        r503 = next(r for r in asyncio.run(burst()) if r.status_code == 503)
        assert_openai_error(r503, 503, "overloaded", says="--max-pending 2")
        assert r503.headers["retry-after"] == "1"
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "again", "max_tokens": 3},
                          timeout=60).status_code == 200


class FlakyBackend(SlowBackend):
    """Fails any generate call that holds a prompt saying BOOM (a backend bug, not the user's)."""

    def generate(self, prompts, sampling):
        if any("BOOM" in str(p.prompt) for p in prompts):
            raise RuntimeError("kaboom")
        return self.inner.generate(prompts, sampling)


def test_a_failing_request_fails_alone_and_the_server_stays_up(cfg, engines):
    import dataclasses

    backend, scorer = engines
    wide = dataclasses.replace(cfg, batch_wait_ms=300)
    with live_server(create_app(wide, backend=FlakyBackend(backend, 0.0), scorer=scorer)) as url:
        async def together() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as ac:
                return list(await asyncio.gather(*[ac.post(f"{url}/v1/completions", json={
                    "prompt": "BOOM" if i == 1 else f"calm sea {i}", "max_tokens": 4}) for i in range(3)]))

        rs = asyncio.run(together())
        assert [r.status_code for r in rs] == [200, 500, 200]
        err = assert_openai_error(rs[1], 500, "internal_error", says="kaboom")
        assert err["type"] == "server_error"
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "after", "max_tokens": 3},
                          timeout=60).status_code == 200


# ---------------------------------------------------------------------- batching across requests


def test_requests_arriving_together_share_generate_and_rm_batches(cfg, engines, base):
    import dataclasses

    backend, scorer = engines
    wide = dataclasses.replace(cfg, batch_wait_ms=300, max_batch_requests=8)
    # generation slowed down a little, so all four are in the server while the first one generates
    with live_server(create_app(wide, backend=SlowBackend(backend, 0.2), scorer=scorer)) as url:
        async def together() -> list[dict]:
            async with httpx.AsyncClient(timeout=120) as ac:
                rs = await asyncio.gather(*[ac.post(f"{url}/v1/completions", json={"prompt": f"star {i} orbit",
                                                                                   "seed": i, "max_tokens": 6})
                                            for i in range(4)])
                return [r.json() for r in rs]

        out = asyncio.run(together())
        timing = [o["bonsynth"]["timing"] for o in out]
        assert max(t["rm_batch_candidates"] for t in timing) > 4  # more than one request's 4 candidates
        assert max(t["generate_batch_requests"] for t in timing) > 1
        fams = httpx.get(f"{url}/metrics").text
        assert "bonsynth_serve_rm_batch_requests_bucket" in fams
    # batched or alone, a seeded request gets the same answer
    for i, o in enumerate(out):
        alone = httpx.post(f"{base}/v1/completions", json={"prompt": f"star {i} orbit", "seed": i,
                                                               "max_tokens": 6}, timeout=60).json()
        assert alone["choices"][0]["text"] == o["choices"][0]["text"]


def test_different_sampling_settings_still_share_rm_batches(cfg, engines):
    """Generation groups by sampling settings; scoring takes every request that is ready, whatever its settings."""
    import dataclasses

    backend, scorer = engines
    # The scorer waits (up to its batch wait) while another admitted request could still join; the wait is long
    # so that on a loaded machine the second request's generation always ends within it (1 s flaked in CI-like
    # runs at load ~10). Slow generation: both requests are in the server before the first is ready to score.
    wide = dataclasses.replace(cfg, batch_wait_ms=1000)
    app = create_app(wide, backend=SlowBackend(backend, 0.3), scorer=scorer)
    app.state.service.scoring.max_wait_s = 30.0  # beyond the flag's range: a test-only margin for the load
    with live_server(app) as url:
        async def two() -> list[dict]:
            async with httpx.AsyncClient(timeout=120) as ac:
                rs = await asyncio.gather(*[ac.post(f"{url}/v1/completions", json={
                    "prompt": "gold map", "max_tokens": 5, "temperature": t, "seed": 1}) for t in (0.7, 0.9)])
                return [r.json()["bonsynth"]["timing"] for r in rs]

        timing = asyncio.run(two())
    assert [t["generate_batch_requests"] for t in timing] == [1, 1]  # two settings: two generate calls
    assert [t["rm_batch_candidates"] for t in timing] == [8, 8]  # one RM call for both


# ---------------------------------------------------------------------- auth


def test_api_key_required_when_set_and_never_logged(cfg, engines, monkeypatch, caplog):
    backend, scorer = engines
    monkeypatch.setenv("BONSYNTH_SERVE_API_KEY", KEY)
    app = create_app(cfg, backend=backend, scorer=scorer)
    monkeypatch.delenv("BONSYNTH_SERVE_API_KEY")
    caplog.set_level(logging.DEBUG)
    with live_server(app) as url:
        body = {"prompt": "hello", "max_tokens": 3}
        assert_openai_error(httpx.post(f"{url}/v1/completions", json=body), 401, "invalid_api_key")
        assert_openai_error(httpx.post(f"{url}/v1/completions", json=body,
                                       headers={"Authorization": "Bearer wrong-" + KEY}), 401, "invalid_api_key")
        assert_openai_error(httpx.get(f"{url}/metrics", headers={"Authorization": KEY}), 401, "invalid_api_key")
        with pytest.raises(openai.AuthenticationError):
            client(url, "sk-wrong").models.list()
        good = client(url, KEY)
        assert good.completions.create(model="tiny", prompt="hello", max_tokens=3).choices
        assert list(good.chat.completions.create(model="tiny", messages=CHAT, max_tokens=3, stream=True))
        assert httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'status="401"' in metrics
    assert "POST /v1/completions" in caplog.text  # the access log was captured ...
    assert KEY not in caplog.text  # ... and holds no key
    assert KEY not in metrics


def test_no_key_no_auth(base):
    assert httpx.post(f"{base}/v1/completions", json={"prompt": "hi", "max_tokens": 2},
                      timeout=60).status_code == 200


# ---------------------------------------------------------------------- upstream mode (reranking proxy)


@pytest.fixture(scope="module")
def upstream(tiny_tokenizer):
    from bonsynth.demo.models import tiny_causal_lm

    srv = GPT2OpenAIServer(tiny_causal_lm(tiny_tokenizer, seed=4), tiny_tokenizer, model_name="tiny-gpt2").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def proxy(upstream, tiny_rm_dir):
    cfg = ServeConfig(policy="tiny-gpt2", rewards=[str(tiny_rm_dir)], backend="openai", base_url=upstream.base_url,
                      n=3, max_tokens=8, upstream_retries=1, upstream_timeout=20,
                      backend_options={"backoff_base": 0.01, "backoff_max": 0.05})
    with live_server(create_app(cfg)) as url:
        yield url


def test_upstream_proxy_reranks_with_the_local_rm(proxy, upstream, rm):
    upstream.reset()
    resp = client(proxy).chat.completions.create(model="tiny-gpt2", messages=CHAT, seed=8,
                                                 extra_body={"return_candidates": True})
    cands = resp.model_extra["bonsynth"]["candidates"]
    assert len(cands) == 3
    assert upstream.requests[-1]["path"] == "/v1/chat/completions" and upstream.requests[-1]["body"]["n"] == 3
    rescored = rm.score([(CHAT, c["text"]) for c in cands])
    assert resp.choices[0].message.content == cands[argmax(rescored)]["text"]
    text = "".join(ch.choices[0].text for ch in client(proxy).completions.create(
        model="tiny-gpt2", prompt="the ship", seed=8, stream=True) if ch.choices)
    assert text == client(proxy).completions.create(model="tiny-gpt2", prompt="the ship", seed=8).choices[0].text


def test_upstream_failures_give_502_and_the_server_stays_up(proxy, upstream):
    upstream.reset()
    upstream.faults.extend([{"status": 500}, {"status": 503}])  # both attempts fail (1 retry)
    r = httpx.post(f"{proxy}/v1/completions", json={"prompt": "the map"}, timeout=60)
    err = assert_openai_error(r, 502, "upstream_failed", says="giving up after 2 attempts")
    assert err["type"] == "upstream_error"
    upstream.faults.extend([{"status": 500}])  # one failure, then the retry succeeds
    assert httpx.post(f"{proxy}/v1/completions", json={"prompt": "the map"}, timeout=60).status_code == 200
    upstream.faults.extend([{"status": 400, "body": {"error": {"message": "prompt too long for 2048 tokens"}}}])
    assert_openai_error(httpx.post(f"{proxy}/v1/completions", json={"prompt": "the map"}, timeout=60), 400,
                        "upstream_rejected", says="prompt too long for 2048 tokens")
    assert httpx.get(f"{proxy}/health").json()["status"] == "ok"
    assert client(proxy).completions.create(model="tiny-gpt2", prompt="the map").choices


# ---------------------------------------------------------------------- SIGTERM drains


@pytest.mark.slow
def test_sigterm_drains_the_request_in_flight_then_exits_0(upstream, tiny_rm_dir, tmp_path):
    upstream.reset()
    upstream.latency = lambda body: 3.0  # the request is in flight upstream when SIGTERM arrives
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, BONSYNTH_SERVE_API_KEY=KEY, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "bonsynth.cli", "serve", "--backend", "openai",
                                 "--base-url", upstream.base_url, "--policy", "tiny-gpt2", "--reward",
                                 str(tiny_rm_dir), "--n", "2", "--max-tokens", "6", "--port", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", headers=auth, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        result: dict = {}

        def call() -> None:
            r = httpx.post(f"{url}/v1/completions", json={"prompt": "the storm"}, headers=auth, timeout=60)
            result.update(status=r.status_code, body=r.json())

        t = threading.Thread(target=call)
        t.start()
        while not upstream.requests:  # the request reached the upstream: it is in flight
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        t.join(timeout=60)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        upstream.reset()
    assert result["status"] == 200 and result["body"]["choices"][0]["text"] is not None
    text = log.read_text()
    assert "POST /v1/completions" in text and KEY not in text


# ---------------------------------------------------------------------- library use


def test_create_app_mounts_in_another_asgi_app(cfg, engines):
    from starlette.applications import Starlette
    from starlette.routing import Mount

    backend, scorer = engines
    app = create_app(cfg, backend=backend, scorer=scorer)
    outer = Starlette(routes=[Mount("/bon", app=app)])

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url="http://local") as ac:
            r = await ac.post("/bon/v1/completions", json={"prompt": "the island", "max_tokens": 4, "seed": 1})
        await app.state.service.aclose()  # a mounted app's lifespan does not run: the host closes it
        return r

    r = asyncio.run(main())
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert backend.model is not None  # engines passed in stay the caller's (not closed)


# ---------------------------------------------------------------------- speculative rejection (issue 16)


def test_pruning_config_names_the_field_and_cli_the_flag(tiny_policy_dir, tiny_rm_dir):
    ok = {"policy": str(tiny_policy_dir), "rewards": [str(tiny_rm_dir)]}
    for bad, says, argv, flag_says in [
            ({"prune_at": [4]}, "prune_at needs prune_keep", ["--prune-at", "4"], "--prune-at needs --prune-keep"),
            ({"prune_at": [200], "prune_keep": 0.5}, "not below max_tokens 128", ["--prune-at", "200", "--prune-keep",
                                                                                  "0.5"], "not below --max-tokens 128"),
            ({"prune_keep": 1.5}, "prune_keep must be a share", ["--prune-keep", "1.5"], "--prune-keep must be a share")]:
        with pytest.raises(ConfigError) as e:
            ServeConfig(**ok, **bad)
        assert says in str(e.value) and "--" not in str(e.value), str(e.value)
        code, _, err = run_bonsynth(["serve", "--policy", ok["policy"], "--reward", ok["rewards"][0], *argv])
        assert code == 2 and err.strip().count("\n") == 0 and flag_says in err, err
    code, _, err = run_bonsynth(["serve", "--policy", str(tiny_policy_dir), "--reward", str(tiny_rm_dir),
                                 "--prune-keep", "half"])
    assert code == 2 and err.strip().count("\n") == 0 and "--prune-keep must be a number" in err


def test_pruning_server_stops_the_weakest_and_answers_like_the_step(cfg, engines):
    """With --prune-at/--prune-keep each request's candidates are pruned as `generate --prune-at` prunes them:
    the same candidates (texts, where each stopped) as the one best-of-N step's own pruned generation of that
    request, ceil(keep x running) kept at the point, the answer the best finished candidate; concurrent pruned
    requests (partial replies scored in the generation thread while another request is scored) each get their
    solo answer; a request shorter than the point is not pruned; n above the survivors is a 400."""
    import dataclasses

    from bonsynth.generate.prune import PruneConfig, kept_count
    from bonsynth.generate.step import generate_candidates

    backend, scorer = engines
    pruned_cfg = dataclasses.replace(cfg, prune_at=[3], prune_keep=0.5, batch_wait_ms=200)
    app = create_app(pruned_cfg, backend=backend, scorer=scorer)
    service = app.state.service
    prompts = [f"the old ship {i} crosses the grey sea" for i in range(4)]
    body = {"best_of": 8, "n": 2, "max_tokens": 8, "return_candidates": True, "temperature": 1.0}
    with live_server(app) as url:
        async def together() -> list[dict]:
            async with httpx.AsyncClient(timeout=180) as ac:
                rs = await asyncio.gather(*[ac.post(f"{url}/v1/completions", json={**body, "prompt": p, "seed": i})
                                            for i, p in enumerate(prompts)])
                return [r.json() for r in rs]

        out = asyncio.run(together())
        solo = httpx.post(f"{url}/v1/completions", json={**body, "prompt": prompts[0], "seed": 0}, timeout=180).json()
        short = httpx.post(f"{url}/v1/completions", json={**body, "prompt": prompts[1], "seed": 1, "max_tokens": 3},
                           timeout=180).json()
        too_many = httpx.post(f"{url}/v1/completions", json={**body, "prompt": prompts[2], "n": 5}, timeout=60)
        fams = httpx.get(f"{url}/metrics").text
    assert solo["choices"] == out[0]["choices"]
    for i, o in enumerate(out):
        extra = o["bonsynth"]
        cands = extra["candidates"]
        job = service.job_for(prompts[i], n=2, best_of=8, temperature=1.0, top_p=None, max_tokens=8, stop=(), seed=i)
        assert job.prune == PruneConfig(points=(3,), keep=0.5)
        (want,) = generate_candidates([job.record], backend, job.sampling, job.prune, scorer)
        assert [(c["text"], c["pruned_at"], c["num_tokens"]) for c in cands] == [
            (c.text, c.pruned_at, c.num_tokens) for c in want.completions]
        assert extra["pruned"] == sum(c["pruned_at"] == 3 for c in cands)
        assert sum(c["pruned_at"] is None for c in cands) >= kept_count(0.5, 8)  # the kept ones run on
        finished = sorted((c for c in cands if c["pruned_at"] is None), key=lambda c: (-c["reward"], c["index"]))
        assert [c["text"] for c in o["choices"]] == [c["text"] for c in finished[:2]]
        assert o["usage"]["completion_tokens"] == sum(c["num_tokens"] for c in cands)
    assert short["bonsynth"]["pruned"] == 0 and all(c["pruned_at"] is None for c in short["bonsynth"]["candidates"])
    assert_openai_error(too_many, 400, "invalid_value", param="n", says="as few as 4 of best_of 8")
    pruned_total = sum(o["bonsynth"]["pruned"] for o in out) + solo["bonsynth"]["pruned"]
    assert pruned_total > 0
    assert f"bonsynth_serve_candidates_pruned_total {float(pruned_total)}" in fams
