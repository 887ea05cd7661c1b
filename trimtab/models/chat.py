"""Conversations as text: the one chat-template check and the one rendering with its fallback.

Training, evaluation prompts and token counting all render chats here, so a model without a
chat template sees the same ``role: content`` lines at every stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

FALLBACK_GENERATION_PROMPT = "assistant: "


class TemplateRefused(ValueError):
    """The chat template raised an error for a conversation (e.g. roles must alternate)."""


def has_chat_template(tokenizer: Any) -> bool:
    """True if the tokenizer carries a chat template (instruct models do, base models often not)."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool
) -> str:
    """The conversation as text: the model's chat template, else ``role: content`` lines.

    The fallback's generation prompt is :data:`FALLBACK_GENERATION_PROMPT`; generation must
    use the same. Raises :class:`TemplateRefused` when the template rejects the conversation.
    """
    if has_chat_template(tokenizer):
        from jinja2 import TemplateError  # chat templates need jinja2, the rest of us does not

        try:
            return tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except TemplateError as e:
            raise TemplateRefused(f"the model's chat template refuses it: {e}") from e
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + (FALLBACK_GENERATION_PROMPT if add_generation_prompt else "")
