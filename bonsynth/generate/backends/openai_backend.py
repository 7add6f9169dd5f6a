"""OpenAI-compatible HTTP backend: `vllm serve`, SGLang, TGI's OpenAI route, or a hosted API.

Each prompt is one request asking for `n` choices with `seed=prompt_seed(run_seed, prompt.id)`, so samples do
not depend on batching (as far as the server honours `seed`). Routing (`endpoint`):

* `auto`: chat prompts go to `/chat/completions` (messages sent as they are; the server applies its chat
  template), plain-text prompts to `/completions`.
* `completions`: every prompt is rendered locally with `render_prompt` (the tokenizer's chat template when a
  `tokenizer` is given, else bonsynth's plain fallback) and sent as text.
* `chat`: every prompt goes to `/chat/completions`; a plain-text prompt becomes one user message.

For chat requests `prompt_text` records `render_prompt(prompt, tokenizer)`, bonsynth's best knowledge of the
text; the server's own template may differ.

Token counts: `prompt_tokens` is `usage.prompt_tokens`. OpenAI's `usage.completion_tokens` is a total over the
`n` choices, so per-choice counts are: the total itself when n == 1; `max_tokens` for a choice that finished on
"length"; the remainder of the total when exactly one choice is still unknown; else, when a `tokenizer` is
given, the token count of the choice's text (approximate: it misses a trailing EOS and stop-string tokens);
else 0, meaning unknown.

Requests run concurrently on one `httpx.AsyncClient` behind a semaphore (`concurrency` requests in flight at
most). 408/409/425/429/5xx responses, connection errors and timeouts are retried `max_retries` times with
exponential backoff and jitter, waiting at least as long as a `Retry-After` / `retry-after-ms` header asks.
Other 4xx answers are user errors, raised at once with the status and the server's message.

The API key is read from the environment variable `api_key_env` when requests are made and only ever placed
in the Authorization header: it is not stored on the object and is masked out of every error and log line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import os
import random
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bonsynth.data.chat import render_prompt
from bonsynth.data.records import PromptRecord
from bonsynth.errors import BonsynthError, ConfigError
from bonsynth.generate.backends.base import (
    Completion,
    Continuation,
    Extension,
    GenerationBackend,
    GenerationResult,
    PreparedPrompt,
    SamplingConfig,
    normalize_finish_reason,
)
from bonsynth.generate.seeding import prompt_seed
from bonsynth.redact import redact_text, redact_url, url_secrets

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
BASE_URL_ENVS = ("BONSYNTH_OPENAI_BASE_URL", "OPENAI_BASE_URL")
ENDPOINTS = ("auto", "completions", "chat")
RETRY_STATUS = frozenset({408, 409, 425, 429})
MAX_MESSAGE_CHARS = 500


class UpstreamRejected(BonsynthError):
    """The server refused the request itself (a 4xx that retrying cannot fix); `status` is its HTTP status,
    so a proxy in front (`bonsynth serve`) can pass a client error on as one."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def public_url(url: str) -> str:
    """The URL as it may be logged or recorded: no user:password, no secret-looking query parameters."""
    return redact_url(url)


def resolve_base_url(base_url: str | None) -> str:
    """`base_url`, else $BONSYNTH_OPENAI_BASE_URL, else $OPENAI_BASE_URL, else OpenAI's own API."""
    url = base_url or next((os.environ[k] for k in BASE_URL_ENVS if os.environ.get(k)), DEFAULT_BASE_URL)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"OpenAI base URL must be an http(s) URL, got {public_url(url)!r}")
    return url.rstrip("/")


def parse_retry_after(headers: Any) -> float | None:
    """Seconds the server asks us to wait (`retry-after-ms`, or `Retry-After` as seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def server_message(response: Any) -> str:
    """The server's error text: OpenAI's `error.message`, FastAPI's `detail`, or the raw body."""
    try:
        data = response.json()
    except ValueError:
        data = None
    msg: Any = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
        elif isinstance(err, str):
            msg = err
        msg = msg or data.get("detail") or data.get("message")
    if msg is None:
        msg = response.text
    msg = " ".join(str(msg).split())
    return msg[:MAX_MESSAGE_CHARS] + ("..." if len(msg) > MAX_MESSAGE_CHARS else "")


def completion_token_counts(
    texts: list[str],
    finishes: list[str],
    usage_total: int | None,
    max_tokens: int,
    count: Any = None,
) -> list[int]:
    """Per-choice completion token counts from what an OpenAI response tells (see the module docstring)."""
    if len(texts) == 1 and usage_total is not None:
        return [int(usage_total)]
    counts: list[int | None] = [max_tokens if f == "length" else None for f in finishes]
    unknown = [i for i, c in enumerate(counts) if c is None]
    if len(unknown) == 1 and usage_total is not None:
        known = sum(c for c in counts if c is not None)
        counts[unknown[0]] = max(0, int(usage_total) - known)
    elif count is not None:
        for i in unknown:
            counts[i] = count(texts[i])
    return [c if c is not None else 0 for c in counts]


class _Redactor:
    """Masks the API key, and the base URL's password and secret query values, in any text that may reach a log
    line or an exception (a server may echo the request's URL or headers back in its error message)."""

    def __init__(self, secret: str | None, base_url: str | None = None) -> None:
        self._secrets = sorted({s for s in (secret, *url_secrets(base_url or "")) if s and len(s) >= 3},
                               key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return redact_text(text)


def join_url(base_url: str, path: str) -> str:
    """`base_url` + `path`, with the path before the base URL's query string (e.g. Azure's `?api-version=`)."""
    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + path, parts.query, parts.fragment))


class OpenAIBackend(GenerationBackend):
    """Generate through an OpenAI-compatible server with concurrency limits and retries."""

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        endpoint: str = "auto",
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        tokenizer: str | Any = None,
        extra_body: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        if endpoint not in ENDPOINTS:
            raise ConfigError(f"unknown OpenAI endpoint {endpoint!r}; choose one of {', '.join(ENDPOINTS)}")
        if int(concurrency) < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        if not float(timeout) > 0:
            raise ConfigError(f"timeout must be positive, got {timeout}")
        if int(max_retries) < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        if not model:
            raise ConfigError("the openai backend needs a model name (as the server knows it)")
        self.model = model
        self.base_url = resolve_base_url(base_url)
        self.api_key_env = api_key_env
        self.endpoint = endpoint
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.extra_body = dict(extra_body or {})
        self._tokenizer_src = tokenizer
        self._tokenizer: Any = None
        self._trust_remote_code = trust_remote_code
        self._rng = random.Random()
        self.last_stats: dict[str, Any] = {}

    # ------------------------------------------------------------------ helpers

    @property
    def tokenizer(self) -> Any:
        """The optional local tokenizer (chat template for `completions`, token counts); None if not given."""
        if self._tokenizer is None and self._tokenizer_src is not None:
            if isinstance(self._tokenizer_src, str):
                from transformers import AutoTokenizer

                try:
                    self._tokenizer = AutoTokenizer.from_pretrained(
                        self._tokenizer_src, trust_remote_code=self._trust_remote_code
                    )
                except OSError as e:
                    raise BonsynthError(f"cannot load tokenizer {self._tokenizer_src}: {e}") from e
            else:
                self._tokenizer = self._tokenizer_src
        return self._tokenizer

    def _count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _api_key(self) -> str | None:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if not key and urlsplit(self.base_url).hostname == urlsplit(DEFAULT_BASE_URL).hostname:
            raise ConfigError(f"the OpenAI API needs a key: set the environment variable {self.api_key_env}")
        return key or None

    def _route(self, rec: PromptRecord) -> str:
        if self.endpoint == "auto":
            return "chat" if rec.is_chat else "completions"
        return self.endpoint

    def _request(self, rec: PromptRecord, sampling: SamplingConfig) -> tuple[str, dict[str, Any], str]:
        """(path, JSON body, prompt_text) for one prompt."""
        route = self._route(rec)
        body: dict[str, Any] = {
            "model": self.model,
            "n": sampling.n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "seed": prompt_seed(sampling.seed, rec.id),
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        text = render_prompt(rec.prompt, self.tokenizer)
        if route == "chat":
            body["messages"] = rec.prompt if rec.is_chat else [{"role": "user", "content": rec.prompt}]
            path = "/chat/completions"
        else:
            body["prompt"] = text
            path = "/completions"
        body.update(self.extra_body)
        return path, body, text

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter (half fixed, half random), never shorter than Retry-After."""
        base = min(self.backoff_max, self.backoff_base * (2**attempt))
        delay = base * (0.5 + 0.5 * self._rng.random())
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    # ------------------------------------------------------------------ requests

    async def _post(
        self, client: Any, sem: asyncio.Semaphore, rec: PromptRecord, path: str, body: dict, redact: _Redactor
    ) -> dict:
        import httpx

        url = join_url(self.base_url, path)
        where = f"{public_url(url)} (prompt {rec.id})"
        reason = ""
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                async with sem:
                    self.last_stats["requests"] += 1
                    resp = await client.post(url, json=body)
            except httpx.TimeoutException:
                reason = f"no answer within the {self.timeout:g}s timeout"
            except httpx.TransportError as e:
                reason = f"connection error ({type(e).__name__}: {redact(str(e))})"
            else:
                status = resp.status_code
                if 200 <= status < 300:
                    try:
                        data = resp.json()
                    except ValueError:
                        raise BonsynthError(
                            f"{where}: the server's answer is not JSON: {resp.text[:200]!r}"
                        ) from None
                    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
                        raise BonsynthError(f"{where}: the server's answer has no 'choices' list")
                    return data
                msg = redact(server_message(resp))
                if status not in RETRY_STATUS and status < 500:
                    raise UpstreamRejected(f"{where}: the server rejected the request: HTTP {status}: {msg}",
                                           status)
                reason = f"HTTP {status}: {msg}"
                retry_after = parse_retry_after(resp.headers)
            if attempt == self.max_retries:
                break
            delay = self._delay(attempt, retry_after)
            self.last_stats["retries"] += 1
            log.warning("%s: %s; retry %d/%d in %.2fs", where, reason, attempt + 1, self.max_retries, delay)
            await asyncio.sleep(delay)
        raise BonsynthError(f"{where}: giving up after {self.max_retries + 1} attempts; last error: {reason}")

    def _result(
        self, data: dict, prompt_text: str, route: str, sampling: SamplingConfig, where: str
    ) -> GenerationResult:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        if len(choices) != sampling.n:
            raise BonsynthError(
                f"{where}: asked for n={sampling.n} choices, the server returned {len(choices)} "
                "(does it support `n`?)"
            )
        texts = []
        for c in choices:
            if route == "chat":
                texts.append(((c.get("message") or {}).get("content")) or "")
            else:
                texts.append(c.get("text") or "")
        finishes = [normalize_finish_reason(c.get("finish_reason")) for c in choices]
        usage = data.get("usage") or {}
        total = usage.get("completion_tokens")
        counter = self._count_tokens if self.tokenizer is not None else None
        counts = completion_token_counts(texts, finishes, total, sampling.max_new_tokens, counter)
        prompt_tokens = usage.get("prompt_tokens")
        if prompt_tokens is None:
            prompt_tokens = self._count_tokens(prompt_text) if counter else 0
        return GenerationResult(
            prompt_text=prompt_text,
            prompt_tokens=int(prompt_tokens),
            completions=tuple(
                Completion(text=t, finish_reason=f, num_tokens=int(k))
                for t, f, k in zip(texts, finishes, counts, strict=True)
            ),
        )

    async def _generate_async(
        self, prompts: list[PromptRecord], sampling: SamplingConfig
    ) -> list[GenerationResult]:
        requests = [self._request(rec, sampling) for rec in prompts]
        answers = await self._post_all(prompts, [(path, body) for path, body, _ in requests])
        results = []
        for rec, (path, _, text), data in zip(prompts, requests, answers, strict=True):
            where = f"{public_url(join_url(self.base_url, path))} (prompt {rec.id})"
            results.append(self._result(data, text, "chat" if path.startswith("/chat") else "completions",
                                        sampling, where))
        return results

    async def _post_all(self, recs: list[PromptRecord], requests: list[tuple[str, dict]]) -> list[dict]:
        """Send every (path, body) request concurrently (at most `concurrency` in flight); answers in order."""
        import httpx

        key = self._api_key()
        redact = _Redactor(key, self.base_url)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)

        async with httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(self.timeout), limits=limits
        ) as client:
            try:
                async with asyncio.TaskGroup() as tg:
                    tasks = [tg.create_task(self._post(client, sem, rec, path, body, redact))
                             for rec, (path, body) in zip(recs, requests, strict=True)]
            except BaseExceptionGroup as group:
                raise _first_error(group) from None
        return [t.result() for t in tasks]

    # ------------------------------------------------------------------ pruned generation (segments)

    def prepare(self, prompts: list[PromptRecord], sampling: SamplingConfig) -> list[PreparedPrompt]:
        """Each prompt rendered once as the text the /completions endpoint continues; a prompt routed to
        /chat/completions cannot be continued after a partial reply, so that is a one-line error."""
        out = []
        for rec in prompts:
            if self._route(rec) == "chat":
                raise ConfigError(
                    f"--prune-at/--prune-keep: the openai backend continues partial replies on the /completions "
                    f"endpoint only, and prompt {rec.id!r} goes to /chat/completions (endpoint {self.endpoint}); use "
                    "endpoint completions (with a tokenizer for the chat template), or the hf or vllm backend")
            text = render_prompt(rec.prompt, self.tokenizer)
            count = self._count_tokens(text) if self.tokenizer is not None else 0  # 0: unknown, as in `generate`
            out.append(PreparedPrompt(result=GenerationResult(prompt_text=text, prompt_tokens=count)))
        return out

    def extend(self, prepared: list[PreparedPrompt], items: list[Continuation], sampling: SamplingConfig,
               max_new_tokens: int) -> list[Extension]:
        """One /completions request per candidate: prompt + the partial reply as text, `n=1`, the candidate's
        segment seed; `usage.completion_tokens` of an n=1 answer counts the segment's tokens exactly."""
        self.last_stats = {"requests": 0, "retries": 0}
        if not items:
            return []
        recs, requests = [], []
        for it in items:
            body: dict[str, Any] = {"model": self.model, "n": 1, "temperature": sampling.temperature,
                                    "top_p": sampling.top_p, "max_tokens": max_new_tokens, "seed": it.seed,
                                    "prompt": prepared[it.prompt].result.prompt_text + it.text}
            if sampling.stop:
                body["stop"] = list(sampling.stop)
            body.update(self.extra_body)
            recs.append(PromptRecord(id=f"#{it.prompt} (a continuation)", prompt=body["prompt"]))
            requests.append(("/completions", body))
        answers = self._run(self._post_all(recs, requests))
        exts = []
        seg = dataclasses.replace(sampling, n=1, max_new_tokens=max_new_tokens)
        for it, data in zip(items, answers, strict=True):
            where = f"{public_url(join_url(self.base_url, '/completions'))} (continuation)"
            res = self._result(data, "", "completions", seg, where)
            c = res.completions[0]
            exts.append(Extension(tokens=(), text=it.text + c.text, num_tokens=it.num_tokens + c.num_tokens,
                                  finish_reason=c.finish_reason))
        return exts

    # ------------------------------------------------------------------ interface

    def generate(self, prompts: list[PromptRecord], sampling: SamplingConfig) -> list[GenerationResult]:
        self.last_stats = {"requests": 0, "retries": 0}
        if not prompts:
            return []
        return self._run(self._generate_async(list(prompts), sampling))

    @staticmethod
    def _run(coro: Any) -> Any:
        """Run a coroutine to its end, also when called from inside an event loop (a notebook: on a worker thread)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, coro).result()

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "model": self.model,
            "base_url": public_url(self.base_url),
            "endpoint": self.endpoint,
            "api_key_env": self.api_key_env,
            "concurrency": self.concurrency,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "tokenizer": self._tokenizer_src if isinstance(self._tokenizer_src, str) else None,
            "extra_body": sorted(self.extra_body),
        }

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={public_url(self.base_url)!r}, endpoint={self.endpoint!r})"


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first real error of a task group (a BonsynthError when there is one), unwrapped."""
    flat: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack[:0] = list(exc.exceptions)
        else:
            flat.append(exc)
    for exc in flat:
        if isinstance(exc, BonsynthError):
            return exc
    return flat[0] if flat else group
