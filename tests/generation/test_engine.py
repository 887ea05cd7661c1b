"""The engine: continuous batching, adapters sharing one base, OpenAI's semantics per request."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest
import torch

from trimtab.generation.engine import Engine
from trimtab.generation.pool import ModelPool
from trimtab.generation.sampling import SamplingParams
from trimtab.generation.types import EngineError, ModelNotFound, QueueFull, Request

GREEDY = {"temperature": 0}


def _rows(root: Path) -> Path:
    rows = [
        {"prompt": f"review {i}: {'great' if i % 2 else 'awful'}\n\n###\n\n", "completion": " ok"}
        for i in range(32)
    ]
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, tiny_bert_dir: Path):
    """Two LoRA runs on the tiny Llama (different seeds: different adapters) and a
    classification run on the tiny BERT, in one runs folder."""
    from trimtab.training import load_config, train

    root = tmp_path_factory.mktemp("served")
    data = _rows(root)
    for name, seed in (("a", 1), ("b", 2)):
        config = load_config(
            None,
            [
                f"data.train={data}",
                f"model.name={tiny_llama_dir}",
                f"run_dir={root / 'runs' / name}",
                "method.name=lora",
                "method.init_lora_weights=gaussian",  # B != 0: each adapter changes the output
                "max_steps=3",
                "batch_size=8",
                "optim.lr=0.05",
                "precision=fp32",
                f"seed={seed}",
            ],
        )
        train(config, progress=False)
    labelled = root / "labels.jsonl"
    labelled.write_text(
        "".join(
            json.dumps({"prompt": f"review {i}: {w}", "completion": f" {s}"}) + "\n"
            for i in range(16)
            for s, w in (("1", "awful broke"), ("5", "great love"))
        )
    )
    config = load_config(
        None,
        [
            f"data.train={labelled}",
            f"model.name={tiny_bert_dir}",
            f"run_dir={root / 'runs' / 'cls'}",
            "data.task=classify",
            "method.name=full",
            "max_steps=2",
            "batch_size=8",
            "precision=fp32",
        ],
    )
    train(config, progress=False)
    return root / "runs"


@pytest.fixture(scope="module")
def pool(runs: Path, tiny_llama_dir: Path) -> ModelPool:
    return ModelPool(runs, preload=[str(tiny_llama_dir)], max_adapters=8)


@pytest.fixture(scope="module")
def engine(pool: ModelPool):
    engine = Engine(pool, max_batch_size=16, max_queue=64)
    yield engine
    engine.close()


def ids(pool: ModelPool) -> dict[str, str]:
    """Model ids by short name: base, a, b, cls."""
    out = {}
    for info in pool.list():
        if info.fine_tuned:
            out[info.id.split(":")[3]] = info.id
        elif "tiny-llama" in info.id:
            out["base"] = info.id
    return out


def ask(engine: Engine, model: str, prompt: str | list[int] = "Great product", **params):
    return engine.submit(Request(model, prompt, SamplingParams(**params)))


def test_model_ids_name_fine_tunes_like_openai_with_their_base_as_parent(pool, tiny_llama_dir):
    names = ids(pool)
    assert names["a"].startswith("ft:") and names["a"].split(":")[2] == "trimtab"
    info = pool.info(names["a"])
    assert info.parent == str(tiny_llama_dir) and info.fine_tuned
    assert pool.info("a").id == names["a"]  # a run is also found by its folder name


def test_unknown_model_is_model_not_found(engine):
    with pytest.raises(ModelNotFound) as err:
        ask(engine, "no-such-model")
    assert err.value.status == 404 and err.value.param == "model"


def test_greedy_text_is_the_same_alone_and_in_a_batch_of_eight(engine, pool):
    base = ids(pool)["base"]
    prompts = ["Great product", "Terrible. It broke", "It is okay", "I love it", "The battery"]
    alone = [
        ask(engine, base, p, max_tokens=12, **GREEDY).result().choices[0].text for p in prompts
    ]
    together = [ask(engine, base, prompts[i % 5], max_tokens=12, **GREEDY) for i in range(8)]
    texts = [s.result().choices[0].text for s in together]
    assert texts == [alone[i % 5] for i in range(8)]


def test_adapters_of_one_base_share_a_batch_and_each_answers_as_alone(engine, pool):
    names = ids(pool)
    models = [names["base"], names["a"], names["b"]]
    alone = [ask(engine, m, max_tokens=10, **GREEDY).result().choices[0].text for m in models]
    assert len(set(alone)) == 3  # each adapter really changes the model
    mixed = [ask(engine, models[i % 3], max_tokens=10, **GREEDY) for i in range(6)]
    assert [s.result().choices[0].text for s in mixed] == [alone[i % 3] for i in range(6)]
    loaded = pool._loaded[pool.target(names["a"]).group]
    assert set(loaded.adapters) == {
        pool.target(names["a"]).adapter_name,
        pool.target(names["b"]).adapter_name,
    }


def test_least_recently_used_adapter_leaves_beyond_max_adapters(runs, tiny_llama_dir):
    pool = ModelPool(runs, preload=[str(tiny_llama_dir)], max_adapters=1)
    engine = Engine(pool)
    try:
        names = ids(pool)
        first = ask(engine, names["a"], max_tokens=4, **GREEDY).result().choices[0].text
        ask(engine, names["b"], max_tokens=4, **GREEDY).result()
        loaded = pool._loaded[pool.target(names["a"]).group]
        assert list(loaded.adapters) == [pool.target(names["b"]).adapter_name]
        again = ask(engine, names["a"], max_tokens=4, **GREEDY).result().choices[0].text
        assert again == first  # reloaded on demand, same answer
    finally:
        engine.close()


def test_a_short_request_joins_a_running_batch_and_ends_first(engine, pool):
    base = ids(pool)["base"]
    long = ask(engine, base, max_tokens=200, logit_bias={0: -100}, **GREEDY)
    pieces = iter(long)
    next(pieces)  # the long request is decoding now
    short = ask(engine, base, "I love it", max_tokens=3, **GREEDY)
    assert short.result().choices[0].finish_reason == "length"
    assert engine.live_rows() >= 1  # the long one still runs: the short one did not wait
    rest = list(pieces)
    assert rest[-1].finish_reason == "length"


def test_cancel_frees_the_rows_at_once(engine, pool):
    base = ids(pool)["base"]
    stream = ask(engine, base, max_tokens=200, n=3, logit_bias={0: -100}, temperature=1, seed=1)
    next(iter(stream))
    stream.cancel()
    deadline = time.monotonic() + 10
    while engine.live_rows() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.live_rows() == 0


def test_same_seed_gives_the_same_text_whatever_runs_beside_it(engine, pool):
    base = ids(pool)["base"]
    params = {"temperature": 1.0, "max_tokens": 12, "seed": 42}
    alone = ask(engine, base, **params).result().choices[0].text
    noise = [ask(engine, base, "I love it", temperature=1, max_tokens=30) for _ in range(4)]
    beside = ask(engine, base, **params).result().choices[0].text
    for s in noise:
        s.result()
    assert beside == alone


def test_streamed_text_never_shows_a_stop_sequence_or_its_start(engine, pool):
    base = ids(pool)["base"]
    full = ask(engine, base, max_tokens=30, **GREEDY).result().choices[0].text
    stop = full[8:11]  # a stop sequence the greedy text reaches
    shown = ""
    for delta in ask(engine, base, max_tokens=30, stop=[stop], **GREEDY):
        shown += delta.text
        assert stop not in shown
        # a shown tail is never the first characters of the stop sequence while it could grow
        if delta.finish_reason is None:
            assert not any(shown.endswith(stop[:k]) for k in range(1, len(stop)))
    assert shown == full[: full.find(stop)]


def test_echo_with_max_tokens_zero_scores_the_prompt_tokens(engine, pool, tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = ids(pool)["base"]
    result = ask(engine, base, "Great product", max_tokens=0, echo=True, logprobs=2).result()
    choice = result.choices[0]
    assert choice.text == "Great product" and result.completion_tokens == 0
    tokens = choice.logprobs
    assert tokens[0].logprob is None and all(t.logprob is not None for t in tokens[1:])
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    prompt = tokenizer("Great product")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt])).logits[0], -1)
    expected = [float(logp[t - 1, prompt[t]]) for t in range(1, len(prompt))]
    assert [t.logprob for t in tokens[1:]] == pytest.approx(expected, abs=1e-4)
    assert all(len(t.top) == 2 and t.top[0].logprob >= t.top[1].logprob for t in tokens[1:])
    assert [t.text_offset for t in tokens] == sorted(t.text_offset for t in tokens)


def test_logprobs_give_the_chosen_token_and_the_top_alternatives(engine, pool):
    base = ids(pool)["base"]
    choice = ask(engine, base, max_tokens=5, logprobs=3, **GREEDY).result().choices[0]
    assert len(choice.logprobs) == 5
    for token in choice.logprobs:
        assert len(token.top) == 3
        assert token.logprob == pytest.approx(token.top[0].logprob)  # greedy takes the top one
        assert token.bytes == list(token.token.encode()) or "\ufffd" in token.token


def test_best_of_returns_the_n_with_the_best_logprob_per_token(engine, pool):
    base = ids(pool)["base"]
    params = {"temperature": 1.0, "max_tokens": 6, "seed": 7}
    result = ask(engine, base, n=2, best_of=5, **params).result()
    assert [c.index for c in result.choices] == [0, 1]
    assert result.completion_tokens == 5 * 6
    all_five = ask(engine, base, n=5, logprobs=0, **params).result().choices
    means = sorted((sum(t.logprob for t in c.logprobs) / len(c.logprobs), c.text) for c in all_five)
    assert [c.text for c in result.choices] == [text for _, text in means[::-1][:2]]


def test_classification_run_answers_with_a_label_and_the_class_distribution(engine, pool):
    result = ask(engine, ids(pool)["cls"], "review 3: great love", logprobs=2, **GREEDY).result()
    choice = result.choices[0]
    assert choice.text in {"1", "5"} and choice.finish_reason == "stop"
    top = choice.logprobs[0].top
    assert {t.token for t in top} == {"1", "5"}
    assert math.fsum(math.exp(t.logprob) for t in top) == pytest.approx(1.0, abs=1e-5)
    assert choice.text == top[0].token


def test_a_prompt_longer_than_the_context_names_max_tokens(engine, pool):
    base = ids(pool)["base"]
    with pytest.raises(EngineError) as err:
        ask(engine, base, [5] * 250, max_tokens=20, **GREEDY).result()
    assert err.value.param == "max_tokens"


def test_token_prompts_outside_the_vocabulary_name_prompt(engine, pool):
    with pytest.raises(EngineError) as err:
        ask(engine, ids(pool)["base"], [5, 10**6])
    assert err.value.param == "prompt"


def test_a_full_queue_refuses_with_queue_full(pool):
    engine = Engine(pool, max_batch_size=1, max_queue=1)
    base = ids(pool)["base"]
    gate = threading.Event()
    try:
        long = ask(engine, base, max_tokens=150, logit_bias={0: -100}, **GREEDY)
        next(iter(long))
        ask(engine, base, max_tokens=150, **GREEDY)  # waits: the batch has one place
        with pytest.raises(QueueFull) as err:
            ask(engine, base, max_tokens=5, **GREEDY)
        assert err.value.status == 429
        gate.set()
    finally:
        engine.close()


def test_a_server_pool_serves_only_listed_models_not_any_folder(runs, tiny_llama_dir):
    listed_only = ModelPool(runs)
    with pytest.raises(ModelNotFound):
        listed_only.info(str(tiny_llama_dir))  # a model folder, but not named at start
    assert ModelPool(runs, any_folder=True).info(str(tiny_llama_dir)).id == str(tiny_llama_dir)
    assert listed_only.info("a").fine_tuned  # runs under the runs folder are listed


def test_closing_the_engine_ends_every_stream_with_an_error(pool):
    engine = Engine(pool)
    base = ids(pool)["base"]
    streams = [ask(engine, base, max_tokens=200, logit_bias={0: -100}, **GREEDY) for _ in range(3)]
    engine.close()
    for stream in streams:
        with pytest.raises(EngineError):
            stream.result()


def test_least_recently_used_idle_model_leaves_beyond_max_models(runs, tiny_llama_dir):
    pool = ModelPool(runs, preload=[str(tiny_llama_dir)], max_models=1)
    engine = Engine(pool)
    try:
        names = ids(pool)
        first = ask(engine, names["base"], max_tokens=4, **GREEDY).result().choices[0].text
        base_group = pool.target(names["base"]).group
        ask(engine, names["cls"], "review 1: great", **GREEDY).result()
        assert not pool.is_loaded(base_group) and pool.is_loaded(pool.target(names["cls"]).group)
        again = ask(engine, names["base"], max_tokens=4, **GREEDY).result().choices[0].text
        assert again == first and pool.is_loaded(base_group)  # loaded again on demand
    finally:
        engine.close()


def test_a_prompt_longer_than_the_context_is_refused_before_it_is_queued(runs, tiny_llama_dir):
    pool = ModelPool(runs, preload=[str(tiny_llama_dir)])  # nothing loaded yet
    engine = Engine(pool)
    try:
        with pytest.raises(EngineError) as err:
            engine.submit(Request(ids(pool)["a"], [5] * 250, SamplingParams(max_tokens=20)))
        assert err.value.param == "max_tokens" and "256 tokens" in str(err.value)
        assert engine.live_rows() == 0 and not pool.is_loaded(pool.target(ids(pool)["a"]).group)
    finally:
        engine.close()
