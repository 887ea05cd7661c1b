"""Label scoring with a shared prompt prefix run once (its key/value cache reused) gives the
scores of scoring every prompt whole."""

import copy

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from trimtab.models import scoring
from trimtab.models.scoring import MIN_SHARED_TOKENS, score_labels

STARS = [" 1", " 2", " 3", " 4", " 5"]
# Long enough to pass MIN_SHARED_TOKENS with the tiny tokenizer, like few-shot examples.
SHOTS = "".join(
    f"{text}\n\n###\n\n {label}\n\n"
    for text, label in [
        ("Great product, works as described and arrived on time.", 5),
        ("Terrible. It broke after one day and the seller never answered.", 1),
        ("It is okay for the price, nothing special.", 3),
    ]
)
TEXTS = [  # suffixes of different lengths, so batches pad them
    "I love it!",
    "The battery lasts a long time but the screen scratches easily.",
    "Okay.",
    "My daughter uses it every day, great product, works as described and arrived on time.",
    "It broke.",
]
PROMPTS = [SHOTS + text + "\n\n###\n\n" for text in TEXTS]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_tokenizer_dir):
    """A tiny Llama (SmolLM2's architecture) with weights large enough that attention is
    sharp: a position or mask error then moves the scores well past the tolerance."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.3,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


@pytest.fixture
def prefix_runs(monkeypatch):
    """How many times a shared prefix was run for its cache (0: every prompt ran whole)."""
    runs: list[int] = []
    real = scoring._Prefix.of.__func__

    def counted(cls, model, rows, k):
        prefix = real(cls, model, rows, k)
        runs.append(prefix.length if prefix is not None else 0)
        return prefix

    monkeypatch.setattr(scoring._Prefix, "of", classmethod(counted))
    return runs


def test_prompts_share_a_prefix_long_enough_for_the_cache(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    ids = tokenizer(PROMPTS)["input_ids"]
    assert len(scoring._shared_prefix(ids)) >= MIN_SHARED_TOKENS


@pytest.mark.parametrize("batch_size", [1, 3])
def test_prefix_reuse_gives_the_scores_of_whole_prompts(
    model_and_tokenizer, prefix_runs, batch_size
):
    model, tokenizer = model_and_tokenizer
    reused = score_labels(model, tokenizer, PROMPTS, STARS, batch_size=batch_size)
    assert prefix_runs and prefix_runs[0] >= MIN_SHARED_TOKENS
    whole = score_labels(
        model, tokenizer, PROMPTS, STARS, batch_size=batch_size, reuse_prefix=False
    )
    torch.testing.assert_close(reused, whole, rtol=1e-4, atol=1e-4)
    assert torch.equal(reused.argmax(-1), whole.argmax(-1))


def test_prefix_reuse_handles_labels_without_a_shared_token(model_and_tokenizer, prefix_runs):
    model, tokenizer = model_and_tokenizer
    labels = ["1", "2", "3", "4", "5"]  # one token each: the prompt's last position ranks them
    reused = score_labels(model, tokenizer, PROMPTS, labels, batch_size=2)
    whole = score_labels(model, tokenizer, PROMPTS, labels, batch_size=2, reuse_prefix=False)
    assert prefix_runs[0] >= MIN_SHARED_TOKENS
    torch.testing.assert_close(reused, whole, rtol=1e-4, atol=1e-4)


def test_prompts_without_a_long_shared_prefix_run_whole(model_and_tokenizer, prefix_runs):
    model, tokenizer = model_and_tokenizer
    prompts = [text + "\n\n###\n\n" for text in TEXTS]
    scores = score_labels(model, tokenizer, prompts, STARS, batch_size=2)
    assert prefix_runs == [0]  # looked for, too short: nothing cached
    whole = score_labels(model, tokenizer, prompts, STARS, batch_size=2, reuse_prefix=False)
    torch.testing.assert_close(scores, whole, rtol=0, atol=0)


def test_a_single_prompt_is_scored_whole(model_and_tokenizer, prefix_runs):
    model, tokenizer = model_and_tokenizer
    scores = score_labels(model, tokenizer, PROMPTS[:1], STARS)
    assert prefix_runs == [] and scores.shape == (1, 5)


def test_prompts_longer_than_max_length_keep_their_end(model_and_tokenizer, prefix_runs):
    model, tokenizer = model_and_tokenizer
    long_prompt = SHOTS + "word " * 200 + "\n\n###\n\n"
    prompts = [*PROMPTS, long_prompt]
    max_length = max(len(ids) for ids in tokenizer(PROMPTS)["input_ids"]) + 2
    mixed = score_labels(model, tokenizer, prompts, STARS, max_length=max_length, batch_size=3)
    assert prefix_runs[0] >= MIN_SHARED_TOKENS  # the prompts that fit still share the cache
    whole = score_labels(
        model, tokenizer, prompts, STARS, max_length=max_length, batch_size=3, reuse_prefix=False
    )
    torch.testing.assert_close(mixed, whole, rtol=1e-4, atol=1e-4)
    # The long prompt is its last tokens alone, as the model sees them without the cache.
    ids = tokenizer(long_prompt)["input_ids"][-(max_length - 1) :]
    alone = score_labels(
        model, tokenizer, [tokenizer.decode(ids)], STARS, max_length=max_length + 10
    )
    torch.testing.assert_close(mixed[-1:], alone, rtol=1e-4, atol=1e-4)


def test_multi_token_labels_are_scored_without_the_cache(model_and_tokenizer, prefix_runs):
    model, tokenizer = model_and_tokenizer
    labels = [" great", " bad", " okay then"]  # differ before their last token
    scores = score_labels(model, tokenizer, PROMPTS, labels, batch_size=2)
    assert prefix_runs == []
    assert scores.shape == (len(PROMPTS), 3) and torch.isfinite(scores).all()


def test_prefix_reuse_works_through_a_lora_adapter(model_and_tokenizer, prefix_runs):
    from peft import LoraConfig, get_peft_model

    base, tokenizer = model_and_tokenizer
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(copy.deepcopy(base), config)
    reused = score_labels(model, tokenizer, PROMPTS, STARS, batch_size=2)
    assert prefix_runs[0] >= MIN_SHARED_TOKENS
    whole = score_labels(model, tokenizer, PROMPTS, STARS, batch_size=2, reuse_prefix=False)
    torch.testing.assert_close(reused, whole, rtol=1e-4, atol=1e-4)
