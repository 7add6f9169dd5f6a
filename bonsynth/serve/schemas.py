"""Pydantic models of the two OpenAI request bodies; a bad body becomes one 400 naming the field.

Types are strict (`"max_tokens": "16"` is a wrong type, not 16) so a client bug is reported, not guessed
at. Unknown fields are ignored, as OpenAI-compatible servers do, except the few that would change what the
answer means and that bonsynth does not do (`logprobs`, `echo`, `suffix`, `tools`): those are refused.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bonsynth.serve.errors import ApiError, bad_request

MAX_STOP = 4


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_message(self) -> dict[str, str]:
        """bonsynth's chat message (`developer` is OpenAI's newer name for `system`)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class _Request(_Strict):
    model: str | None = None
    n: int = Field(1, ge=1)
    best_of: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    return_candidates: bool = False

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if isinstance(v, list) and any(not s for s in v) or v == "":
            raise ValueError("stop sequences must not be empty")
        return v

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def new_tokens(self) -> int | None:
        return self.max_tokens


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def prompt(self) -> list[dict[str, str]]:
        return [m.as_message() for m in self.messages]

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Request):
    prompt_: str = Field(alias="prompt")

    def prompt(self) -> str:
        return self.prompt_


# Fields that would change what an answer means; refused rather than silently ignored.
UNSUPPORTED = {"logprobs": "logprobs", "top_logprobs": "logprobs", "echo": "echo", "suffix": "suffix",
               "tools": "tool calls", "functions": "function calls"}

REQUESTS: dict[str, type[_Request]] = {"chat": ChatCompletionRequest, "completions": CompletionRequest}


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, else a 400."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"the body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def parse_request(kind: str, body: dict[str, Any]) -> _Request:
    """The request model for `kind` ("chat" or "completions"), or a 400 naming the first bad field."""
    for name, what in UNSUPPORTED.items():
        value = body.get(name)
        if value not in (None, False, [], 0) and not (name == "suffix" and value == ""):
            raise bad_request(f"field '{name}': {what} are not supported by bonsynth serve", code="unsupported",
                              param=name)
    try:
        return REQUESTS[kind].model_validate(body)
    except ValidationError as e:
        raise validation_error(e) from None


def validation_error(e: ValidationError) -> ApiError:
    err = e.errors()[0]
    loc = field_path(err.get("loc", ()))
    kind = str(err.get("type", ""))
    if kind == "missing":
        code, msg = "missing_field", "is required"
    elif kind.endswith("_type") or kind.endswith("_parsing") or kind in ("literal_error", "union_tag_invalid"):
        code, msg = "invalid_type", f"{err.get('msg', 'wrong type')} (got {type(err.get('input')).__name__})"
    else:
        code, msg = "invalid_value", str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return bad_request(f"field '{loc}': {msg}", code=code, param=loc)


def field_path(loc: tuple) -> str:
    """`messages[0].content` from pydantic's location tuple (union branch names dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[TextPart]", "list[str]", "int", "float", "bool") or str(part).startswith(
                ("function-", "literal[")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "body"
