"""A small OpenAI-compatible server that really generates, for testing the openai backend.

It serves `/v1/completions` and `/v1/chat/completions` on 127.0.0.1 with a tiny HF GPT-2 (`model.generate`),
honouring `n`, `max_tokens`, `temperature`, `top_p`, `seed` and `stop`, and returns real `usage` counts. Chat
messages are rendered server-side with `render_prompt` (the plain fallback for a template-less tokenizer).

For tests it can also misbehave on purpose: `faults` (answers with a given status/headers/body for the next
requests), `delays` (sleeps before answering the next requests, to trip client timeouts) and `latency` (a
per-request sleep, so concurrent requests overlap and finish out of order). `answer` (canned-answer mode)
replaces generation: each choice's text is `answer(body)`, for testing clients that parse what a model says
(an LLM judge). It records every request
(path, body, Authorization header) and the most requests it ever had in flight at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bonsynth.data.chat import render_prompt

MAX_TOKENS_LIMIT = 256


class GPT2OpenAIServer:
    """Start with `start()`; `base_url` is then `http://127.0.0.1:<port>/v1`."""

    def __init__(self, model: Any, tokenizer: Any, model_name: str = "tiny-gpt2") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.faults: deque[dict] = deque()  # {"status", "headers", "body"}; "{auth}" in a body is replaced
        self.delays: deque[float] = deque()
        self.latency: Callable[[dict], float] | None = None
        self.answer: Callable[[dict], str] | None = None
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._gen_lock = threading.Lock()  # torch.manual_seed is global: one generation at a time
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> GPT2OpenAIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def reset(self) -> None:
        # A client has its answer a moment before the handler thread leaves `finally`; wait for
        # those threads so a late decrement cannot leave the counters negative for the next test.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            with self._lock:
                if self.in_flight <= 0:
                    break
            time.sleep(0.005)
        with self._lock:
            self.faults.clear()
            self.delays.clear()
            self.latency = None
            self.answer = None
            self.requests.clear()
            self.in_flight = 0
            self.max_in_flight = 0

    # ------------------------------------------------------------------ handling

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        auth = h.headers.get("Authorization")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.requests.append(
                {"path": h.path, "body": body, "authorization": auth, "time": time.monotonic()}
            )
            fault = self.faults.popleft() if self.faults else None
            delay = self.delays.popleft() if self.delays else 0.0
        try:
            if delay:
                time.sleep(delay)
            if self.latency is not None and body is not None:
                time.sleep(self.latency(body))
            if fault is not None:
                text = json.dumps(fault.get("body", {"error": {"message": "injected failure"}}))
                self._send(h, fault["status"], text.replace("{auth}", auth or ""), fault.get("headers", {}))
                return
            status, payload = self._answer(h.path.split("?", 1)[0], body)  # routes ignore the query, as servers do
            self._send(h, status, json.dumps(payload))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before we answered
        finally:
            with self._lock:
                self.in_flight -= 1

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, text: str, headers: dict | None = None) -> None:
        data = text.encode("utf-8")
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, str(v))
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()

    @staticmethod
    def _error(status: int, message: str) -> tuple[int, dict]:
        return status, {"error": {"message": message, "type": "invalid_request_error", "code": status}}

    def _answer(self, path: str, body: Any) -> tuple[int, dict]:
        if not isinstance(body, dict):
            return self._error(400, "body must be a JSON object")
        if path not in ("/v1/completions", "/v1/chat/completions"):
            return self._error(404, f"no route {path}")
        if body.get("model") != self.model_name:
            return self._error(404, f"The model `{body.get('model')}` does not exist.")
        chat = path.endswith("/chat/completions")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return self._error(400, "messages must be a non-empty list")
            prompt = render_prompt(messages, self.tokenizer)
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                return self._error(400, "prompt must be a string")
        n = body.get("n", 1)
        max_tokens = body.get("max_tokens", 16)
        if not isinstance(n, int) or n < 1:
            return self._error(400, "n must be a positive integer")
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
            return self._error(400, f"max_tokens must be between 1 and {MAX_TOKENS_LIMIT}, got {max_tokens}")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        if self.answer is not None:
            text = self.answer(body)
            choices, usage = [(text, "stop", 1)] * n, {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
        else:
            choices, usage = self._generate(
                prompt,
                n,
                max_tokens,
                float(body.get("temperature", 1.0)),
                float(body.get("top_p", 1.0)),
                body.get("seed"),
                stop,
            )
        if chat:
            out_choices = [
                {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
                for i, (t, f, _) in enumerate(choices)
            ]
            obj = "chat.completion"
        else:
            out_choices = [
                {"index": i, "text": t, "finish_reason": f, "logprobs": None}
                for i, (t, f, _) in enumerate(choices)
            ]
            obj = "text_completion"
        return 200, {
            "id": f"cmpl-{len(self.requests)}",
            "object": obj,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": out_choices,
            "usage": usage,
        }

    def _generate(
        self,
        prompt: str,
        n: int,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: Any,
        stop: list[str],
    ) -> tuple[list[tuple[str, str, int]], dict]:
        import torch

        tok = self.tokenizer
        ids = tok(prompt)["input_ids"] or [tok.eos_token_id]
        eos, pad = tok.eos_token_id, tok.pad_token_id
        kw: dict[str, Any] = dict(
            max_new_tokens=max_tokens,
            num_return_sequences=n,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kw.update(do_sample=False)
        if stop:
            kw.update(stop_strings=stop, tokenizer=tok)
        with self._gen_lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(int(seed))
            out = self.model.generate(
                input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), **kw
            )
        choices = []
        for row in out[:, len(ids) :].tolist():
            while row and row[-1] == pad and pad != eos:
                row = row[:-1]  # rows that finished early are padded
            finish = "length"
            if eos in row:
                row = row[: row.index(eos) + 1]  # EOS counts as a generated token, as in vLLM
                finish = "stop"
            text = tok.decode(row, skip_special_tokens=True)
            cut = [k for k in (text.find(s) for s in stop) if k >= 0]
            if cut:
                text = text[: min(cut)]
                finish = "stop"
            if finish == "length" and len(row) < max_tokens:
                finish = "stop"
            choices.append((text, finish, len(row)))
        completion_tokens = sum(k for _, _, k in choices)
        usage = {
            "prompt_tokens": len(ids),
            "completion_tokens": completion_tokens,
            "total_tokens": len(ids) + completion_tokens,
        }
        return choices, usage
