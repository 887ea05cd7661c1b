"""Label scoring equals the log-probability of each label computed one sequence at a time."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from trimtab.models.scoring import label_token_ids, score_labels

PROMPTS = [
    "Great product, works well.\n\n###\n\n",
    "Terrible.\n\n###\n\n",
    "It is okay for the price, nothing special, but the battery lasts.\n\n###\n\n",
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_llama_dir):
    return (
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval(),
        AutoTokenizer.from_pretrained(tiny_llama_dir),
    )


def brute_force(model, tokenizer, prompt: str, label: str) -> float:
    """log P(label | prompt), one unpadded sequence, every position's distribution."""
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    tail = tokenizer(label, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + tail])
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(tail)))


@pytest.mark.parametrize(
    "labels",
    [
        [" 1", " 2", " 3", " 4", " 5"],  # shared ' ': one pass
        [" great", " bad", " okay then"],
    ],
)  # per-label sequences
def test_scores_equal_per_sequence_log_probabilities(model_and_tokenizer, labels):
    model, tokenizer = model_and_tokenizer
    scores = score_labels(model, tokenizer, PROMPTS, labels, batch_size=2)
    expected = torch.tensor(
        [[brute_force(model, tokenizer, p, lab) for lab in labels] for p in PROMPTS]
    )
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)


def test_star_labels_share_their_space_token(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    ids = label_token_ids(tokenizer, [" 1", " 5"])
    assert len(ids[0]) == 2 and ids[0][0] == ids[1][0] and ids[0][1] != ids[1][1]


def test_long_prompts_keep_their_end(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    long_prompt = "word " * 200 + "\n\n###\n\n"
    scores = score_labels(model, tokenizer, [long_prompt], [" 1", " 5"], max_length=32)
    assert scores.shape == (1, 2) and torch.isfinite(scores).all()
