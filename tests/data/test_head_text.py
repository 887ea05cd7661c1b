"""A classification head reads the prompt without prepare's separator, in training and in eval."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from trimtab.data.examples import SEPARATOR_CANDIDATES, head_text

SEP = SEPARATOR_CANDIDATES[0]  # "\n\n###\n\n"
ROWS = [("Great product, works well.", "5"), ("It broke after a day.", "1")] * 3


def test_head_text_is_the_prompt_without_prepares_separator():
    assert head_text("Great product." + SEP) == "Great product."
    assert head_text("Great product. =>") == "Great product. =>"  # a named one stays


def test_training_encodes_the_same_tokens_for_a_head_with_or_without_the_separator(
    tiny_tokenizer_dir,
):
    from trimtab.data.prepared import encode_classify

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    with_sep = [{"prompt": p + SEP, "completion": " " + c} for p, c in ROWS]
    bare = [{"prompt": p, "completion": c} for p, c in ROWS]
    encoded = encode_classify(with_sep, tok, 64, ["1", "5"])
    assert [e.input_ids for e in encoded] == [
        e.input_ids for e in encode_classify(bare, tok, 64, ["1", "5"])
    ]
    assert [e.label for e in encoded] == [1, 0] * 3


def test_evaluation_gives_a_head_the_prompts_without_the_separator(tmp_path, monkeypatch):
    from trimtab.evaluation import evaluate as ev

    (tmp_path / "test.jsonl").write_text(
        "".join(json.dumps({"prompt": p + SEP, "completion": " " + c}) + "\n" for p, c in ROWS)
    )
    seen: list[str] = []

    def logits(model, tokenizer, texts, **kw):
        seen.extend(texts)
        return torch.tensor([[0.0, 1.0]] * len(texts))

    monkeypatch.setattr(ev, "classify_logits", logits)
    data = ev.load_eval_data(tmp_path)
    model = ev.EvalModel(None, None, "head", "classify", ["1", "5"])
    outcome = ev.evaluate_classification(model, data, bf16=False)
    assert seen == [p for p, _ in ROWS]
    assert (outcome.mode, outcome.predicted) == ("classification head", ["5"] * len(ROWS))


@pytest.mark.parametrize("prompt", ["no separator", "ends with ###", "two lines\n\n"])
def test_head_text_keeps_prompts_without_a_separator(prompt):
    assert head_text(prompt) == prompt
