"""Turn prompts and responses into model text.

With a tokenizer that has a chat template, chat prompts go through `apply_chat_template`. Without one (tiny
demo models, base models), bonsynth uses a documented plain fallback in the hh-rlhf style, so RMs trained on
hh-rlhf transcripts see the same shape:

    "\\n\\nSystem: {system}\\n\\nHuman: {user}\\n\\nAssistant: {assistant}...\\n\\nAssistant:"

and the response is appended as `" " + response`. A plain-string prompt is used as it is, and the response is
appended unchanged (hh-rlhf responses keep their leading space).
"""

from __future__ import annotations

from typing import Any

from bonsynth.data.records import Message, Prompt

ROLE_LABELS = {"system": "System", "user": "Human", "assistant": "Assistant"}
PLAIN_ASSISTANT_TAG = "\n\nAssistant:"


def has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def render_plain_messages(messages: list[Message]) -> str:
    parts = []
    for m in messages:
        label = ROLE_LABELS.get(m["role"], m["role"].capitalize())
        parts.append(f"\n\n{label}: {m['content']}")
    return "".join(parts)


def render_prompt(prompt: Prompt, tokenizer: Any = None) -> str:
    """The text a policy continues (ends where the assistant's reply starts)."""
    if isinstance(prompt, str):
        return prompt
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return render_plain_messages(prompt) + PLAIN_ASSISTANT_TAG


def render_response(prompt: Prompt, response: str, tokenizer: Any = None) -> str:
    """The response as it follows `render_prompt(prompt)` in the full text.

    For chat templates this includes the template's end-of-turn markup, so that
    `render_prompt(p) + render_response(p, r)` is exactly the templated conversation.
    """
    if isinstance(prompt, str):
        return response
    if has_chat_template(tokenizer):
        head = render_prompt(prompt, tokenizer)
        full = tokenizer.apply_chat_template(
            list(prompt) + [{"role": "assistant", "content": response}], tokenize=False
        )
        if full.startswith(head):
            return full[len(head) :]
        return response  # a template that rewrites earlier turns: fall back to the bare reply
    return " " + response if response and not response.startswith((" ", "\n")) else response


def render_pair(prompt: Prompt, response: str, tokenizer: Any = None) -> tuple[str, str]:
    """(prompt_text, response_text) whose concatenation is the full text an RM scores."""
    return render_prompt(prompt, tokenizer), render_response(prompt, response, tokenizer)
