"""Batched generation equals Hugging Face's one-prompt-at-a-time generation, and each sampling
parameter does what OpenAI documents."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from trimtab.errors import ConfigError
from trimtab.generation import Completion, SamplingParams, generate

# Different lengths on purpose: batched together they need left padding.
PROMPTS = [
    "Great product",
    "Terrible. It broke after one day and the seller never answered.",
    "It is okay",
    "I love it! My daughter uses it every day and",
    "1 2 3",
]


def _sharpen(model: torch.nn.Module) -> torch.nn.Module:
    """Larger random weights. At the usual 0.02 init a random model's next token hardly
    depends on the context (greedy repeats one token), so a broken mask, cache or position
    would go unnoticed; with these weights every earlier token matters."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.35)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def flat_llama(tiny_llama_dir):
    """The fixture's model as saved: nearly uniform logits, greedy repeats itself."""
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return _sharpen(AutoModelForCausalLM.from_pretrained(tiny_llama_dir))


@pytest.fixture(scope="module")
def models(tiny_llama_dir, tokenizer, llama):
    """Llama (RoPE: shifting every position alike changes nothing) with both attention
    kernels, and GPT-2, whose absolute positions go wrong if padding shifts them."""
    eager = _sharpen(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager")
    )
    torch.manual_seed(0)
    gpt2 = _sharpen(
        GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tokenizer),
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=256,
                eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.eos_token_id,
            )
        )
    )
    return {"llama-sdpa": llama, "llama-eager": eager, "gpt2": gpt2}


def hf_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """Hugging Face's greedy text and token count for one unpadded prompt."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.eos_token_id,
    )
    new = out[0, ids.shape[1] :].tolist()
    if tokenizer.eos_token_id in new:  # generate pads after eos; the eos itself counts
        new = new[: new.index(tokenizer.eos_token_id) + 1]
    return tokenizer.decode(new, skip_special_tokens=True), len(new)


GREEDY = SamplingParams(temperature=0, max_tokens=12)


@pytest.mark.parametrize("name", ["llama-sdpa", "llama-eager", "gpt2"])
@pytest.mark.parametrize("batch_size", [2, 16])
def test_greedy_batches_equal_hf_generate_one_prompt_at_a_time(models, tokenizer, name, batch_size):
    model = models[name]
    got = generate(model, tokenizer, PROMPTS, GREEDY, batch_size=batch_size)
    for prompt, completion in zip(PROMPTS, got):
        text, count = hf_greedy(model, tokenizer, prompt, GREEDY.max_tokens)
        assert (completion.text, completion.tokens) == (text, count), prompt
        assert completion.prompt_tokens == len(tokenizer(prompt)["input_ids"])


def test_temperature_zero_is_deterministic(llama, tokenizer):
    first = generate(llama, tokenizer, PROMPTS, GREEDY, batch_size=3)
    assert generate(llama, tokenizer, PROMPTS, GREEDY, batch_size=3) == first
    assert generate(llama, tokenizer, PROMPTS, GREEDY.model_copy(update={"seed": 5})) == first


def test_same_seed_gives_same_sample(llama, tokenizer):
    params = SamplingParams(temperature=1.5, max_tokens=10, seed=42)
    first = generate(llama, tokenizer, PROMPTS, params, batch_size=2)
    # The same text whatever the batching: each row draws from its own seeded generator.
    assert generate(llama, tokenizer, PROMPTS, params, batch_size=16) == first
    other = generate(llama, tokenizer, PROMPTS, params.model_copy(update={"seed": 43}))
    assert [c.text for c in other] != [c.text for c in first]


def test_unseeded_sampling_follows_torch_manual_seed(llama, tokenizer):
    params = SamplingParams(temperature=1.5, max_tokens=10)
    torch.manual_seed(1)
    first = generate(llama, tokenizer, PROMPTS, params)
    torch.manual_seed(1)
    assert generate(llama, tokenizer, PROMPTS, params) == first


def test_stop_sequence_is_cut_and_not_included(llama, tokenizer):
    full = generate(llama, tokenizer, PROMPTS, GREEDY)
    text = full[0].text
    start = next(i for i in range(2, len(text) - 2) if "\ufffd" not in text[i : i + 2])
    stop = text[start : start + 2]
    got = generate(
        llama, tokenizer, PROMPTS, GREEDY.model_copy(update={"stop": [stop, "zzz"]}), batch_size=16
    )
    assert got[0].text == text[: text.index(stop)]
    assert got[0].finish_reason == "stop"
    assert got[0].tokens < full[0].tokens
    # The other rows of the batch go on after row 0 left it, unchanged.
    for before, after in zip(full[1:], got[1:]):
        if stop not in before.text:
            assert after == before


def test_max_tokens_gives_finish_reason_length(llama, tokenizer):
    params = SamplingParams(temperature=0, max_tokens=5, logit_bias={tokenizer.eos_token_id: -100})
    for completion in generate(llama, tokenizer, PROMPTS, params):
        assert (completion.finish_reason, completion.tokens) == ("length", 5)


def test_eos_ends_with_stop_and_is_not_in_the_text(llama, tokenizer):
    params = SamplingParams(temperature=0, max_tokens=5, logit_bias={tokenizer.eos_token_id: 100})
    prompt_tokens = len(tokenizer("Great")["input_ids"])
    assert generate(llama, tokenizer, ["Great"], params) == [
        Completion(text="", finish_reason="stop", tokens=1, prompt_tokens=prompt_tokens)
    ]


def _fed_tokens(model, run) -> list[int]:
    """The tokens generated by ``run()`` for one prompt, as fed back to the model (all but
    the last, which is never fed)."""
    fed: list[int] = []

    def record(module, args, kwargs):
        if kwargs["input_ids"].shape[1] == 1:
            fed.append(int(kwargs["input_ids"][0, 0]))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return fed


@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
def test_presence_penalty_discourages_repeats(flat_llama, tokenizer, penalty):
    plain = SamplingParams(temperature=0, max_tokens=20)
    repeats = _fed_tokens(flat_llama, lambda: generate(flat_llama, tokenizer, ["Great"], plain))
    assert len(set(repeats)) < len(repeats)  # without a penalty this model repeats itself
    penalised = plain.model_copy(update={penalty: 2.0})
    fed = _fed_tokens(flat_llama, lambda: generate(flat_llama, tokenizer, ["Great"], penalised))
    assert len(fed) == 19 and len(set(fed)) == len(fed)


def test_negative_presence_penalty_encourages_repeats(llama, tokenizer):
    params = SamplingParams(temperature=0, max_tokens=20, presence_penalty=-2.0)
    fed = _fed_tokens(llama, lambda: generate(llama, tokenizer, ["Great"], params))
    assert len(set(fed)) < len(fed) // 2


def test_top_p_tiny_equals_greedy(llama, tokenizer):
    params = SamplingParams(temperature=1.0, top_p=1e-6, max_tokens=12, seed=3)
    assert generate(llama, tokenizer, PROMPTS, params) == generate(
        llama, tokenizer, PROMPTS, GREEDY
    )


def test_results_keep_input_order(llama, tokenizer):
    one_by_one = [generate(llama, tokenizer, [p], GREEDY)[0] for p in PROMPTS]
    assert generate(llama, tokenizer, PROMPTS, GREEDY, batch_size=2) == one_by_one
    reverse = PROMPTS[::-1]
    assert generate(llama, tokenizer, reverse, GREEDY, batch_size=3) == one_by_one[::-1]


def test_n_completions_per_prompt(llama, tokenizer):
    params = SamplingParams(temperature=1.5, max_tokens=8, seed=7, n=3)
    got = generate(llama, tokenizer, PROMPTS[:2], params, batch_size=4)
    assert len(got) == 6
    # Prompt 0's three first, each equal to what that prompt gets alone.
    assert got[:3] == generate(llama, tokenizer, PROMPTS[:1], params)
    assert got[3:] == generate(llama, tokenizer, PROMPTS[1:2], params)
    assert len({c.text for c in got[:3]}) > 1  # different samples, not copies
    assert {c.prompt_tokens for c in got[3:]} == {len(tokenizer(PROMPTS[1])["input_ids"])}
    greedy = generate(llama, tokenizer, PROMPTS[:1], GREEDY.model_copy(update={"n": 2}))
    assert greedy[0] == greedy[1]


def test_logit_bias_forces_token(llama, tokenizer):
    token = tokenizer.convert_tokens_to_ids("x")
    params = SamplingParams(temperature=0.7, max_tokens=6, seed=0, logit_bias={token: 100})
    assert [c.text for c in generate(llama, tokenizer, PROMPTS, params)] == ["xxxxxx"] * 5


def test_logit_bias_outside_the_vocabulary_is_refused(llama, tokenizer):
    params = SamplingParams(temperature=0, logit_bias={10_000: 5})
    with pytest.raises(ConfigError, match="logit_bias.10000"):
        generate(llama, tokenizer, ["Great"], params)


def test_max_length_keeps_the_end_of_the_prompt(llama, tokenizer):
    prompt = PROMPTS[1]
    ids = tokenizer(prompt)["input_ids"]
    got = generate(llama, tokenizer, [prompt], GREEDY, max_length=GREEDY.max_tokens + 6)[0]
    assert got.prompt_tokens == 6
    tail = torch.tensor([ids[-6:]])
    out = llama.generate(
        input_ids=tail,
        attention_mask=torch.ones_like(tail),
        do_sample=False,
        max_new_tokens=GREEDY.max_tokens,
        pad_token_id=tokenizer.eos_token_id,
    )
    assert got.text == tokenizer.decode(out[0, 6:], skip_special_tokens=True)
    with pytest.raises(ConfigError, match="max_tokens"):
        generate(llama, tokenizer, [prompt], GREEDY, max_length=GREEDY.max_tokens)


def test_empty_prompt_starts_from_the_eos_token(llama, tokenizer):
    got = generate(llama, tokenizer, [""], GREEDY)[0]
    assert got.prompt_tokens == 1 and got.tokens > 0


def test_bf16_runs_under_autocast(llama, tokenizer):
    got = generate(
        llama, tokenizer, PROMPTS, SamplingParams(temperature=0, max_tokens=4), bf16=True
    )
    assert len(got) == len(PROMPTS) and all(0 < c.tokens <= 4 for c in got)
    assert next(llama.parameters()).dtype == torch.float32  # the weights are untouched


def test_no_prompts_give_no_completions_and_the_model_mode_is_kept(llama, tokenizer):
    assert generate(llama, tokenizer, [], GREEDY) == []
    llama.train()
    try:
        assert generate(llama, tokenizer, ["Great"], GREEDY) == generate(
            llama.eval(), tokenizer, ["Great"], GREEDY
        )
        llama.train()
        generate(llama, tokenizer, ["Great"], GREEDY)
        assert llama.training
    finally:
        llama.eval()
