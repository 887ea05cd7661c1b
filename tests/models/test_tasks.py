"""One word per training task, and the one mapping from what data looks like to a task."""

from __future__ import annotations

import pytest

from trimtab.errors import TrimtabError
from trimtab.models.chat import FALLBACK_GENERATION_PROMPT, has_chat_template, render_chat
from trimtab.models.tasks import TASKS, check_task, is_generative, task_for_data_kind


def test_the_task_words_are_sft_lm_and_classify():
    assert TASKS == ("sft", "lm", "classify")


def test_sft_and_lm_are_generative_and_classify_is_not():
    assert [is_generative(t) for t in TASKS] == [True, True, False]


def test_an_old_or_unknown_task_word_is_a_user_error_listing_the_words():
    with pytest.raises(
        TrimtabError, match="unknown task 'causal-lm'; use one of: sft, lm, classify"
    ):
        check_task("causal-lm")


@pytest.mark.parametrize(
    ("kind", "model_kind", "task"),
    [
        ("classification", "decoder", "sft"),
        ("classification", "encoder", "classify"),
        ("conditional-generation", "decoder", "sft"),
        ("open-ended-generation", "decoder", "sft"),
        ("language-modeling", "decoder", "lm"),
    ],
)
def test_data_kind_maps_to_the_task_that_fits_the_model(kind, model_kind, task):
    assert task_for_data_kind(kind, model_kind) == task


def test_encoder_on_generation_data_is_a_user_error():
    with pytest.raises(TrimtabError, match="only be fine-tuned for classification"):
        task_for_data_kind("conditional-generation", "encoder")


def test_unknown_data_kind_is_a_user_error():
    with pytest.raises(TrimtabError, match="unknown data kind 'poetry'"):
        task_for_data_kind("poetry")


class _Plain:
    chat_template = None


def test_tokenizer_without_template_renders_role_lines_and_the_fallback_generation_prompt():
    messages = [{"role": "user", "content": "hi"}]
    assert not has_chat_template(_Plain())
    assert render_chat(_Plain(), messages, True) == "user: hi\n" + FALLBACK_GENERATION_PROMPT
    assert render_chat(_Plain(), messages, False) == "user: hi\n"
