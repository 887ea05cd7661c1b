"""Tests for trimtab.training.batches: encoding prepared examples and batching them by length.

The tokenizer (from conftest) is a tiny byte-level BPE like SmolLM2's: eos ``<|endoftext|>``, no
pad token, no BOS, and it splits " 5" into a space and a digit.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from trimtab.data.prepared import (
    Encoded,
    detect_format,
    encode_classify,
    encode_lm,
    encode_sft,
    label_names,
    read_examples,
)
from trimtab.errors import DataError
from trimtab.models.batching import IGNORE
from trimtab.training.batches import LengthGroupedSampler, collate

SEP = "\n\n###\n\n"
TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|endoftext|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture
def chat_tok(tiny_tokenizer_dir):
    t = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    t.chat_template = TEMPLATE
    return t


@pytest.fixture(scope="module")
def bos_tok(tiny_tokenizer_dir):
    """The tiny tokenizer, but adding ``<|endoftext|>`` as BOS in front of every text."""
    from tokenizers import Tokenizer, processors

    backend = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    eos = backend.token_to_id("<|endoftext|>")
    backend.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


@pytest.fixture(scope="module")
def bert_tok():
    """A tiny WordPiece tokenizer that wraps every text in [CLS] ... [SEP], like BERT's."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train_from_iterator(
        ["great product works well", "terrible it broke after a day"] * 5,
        trainers.WordPieceTrainer(
            vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        ),
    )
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )


def ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def trained(tokenizer: Any, e: Encoded) -> str:
    """The text of the labelled tokens."""
    return tokenizer.decode([y for y in e.labels if y != IGNORE])


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def pc(prompt: str, completion: str) -> dict[str, str]:
    return {"prompt": prompt + SEP, "completion": completion}


# --- supervised fine-tuning -----------------------------------------------------------------


def test_sft_trains_on_the_completion_tokens_only(tok):
    records = [pc("Great product, works as described.", " 5"), pc("It broke.", " 1")]
    encoded = encode_sft(records, tok, max_length=64)
    for e, r in zip(encoded, records):
        prompt, completion = ids(tok, r["prompt"]), ids(tok, r["completion"])
        assert e.input_ids == prompt + completion  # tokenized separately: exact boundary
        assert e.labels == [IGNORE] * len(prompt) + completion
        assert trained(tok, e) == r["completion"]
        assert e.weights is None and e.label is None
    assert len(ids(tok, " 5")) == 2  # the label really is two tokens, both trained


def test_prompt_loss_weight_trains_the_prompt_lightly(tok):
    record = pc("It is okay for the price.", " 3")
    (e,) = encode_sft([record], tok, max_length=64, prompt_loss_weight=0.1)
    n_prompt = len(ids(tok, record["prompt"]))
    assert e.labels == e.input_ids  # every token is labelled
    assert e.weights == [0.1] * n_prompt + [1.0] * (len(e.input_ids) - n_prompt)
    with pytest.raises(ValueError):
        encode_sft([record], tok, max_length=64, prompt_loss_weight=-1)


def test_truncation_drops_the_start_of_the_prompt_and_keeps_separator_and_completion(tok):
    record = pc(
        "The battery lasts a long time but the screen scratches easily. " * 10, " 4 stars" + "\nEND"
    )
    (e,) = encode_sft([record], tok, max_length=40, add_eos=True)
    assert len(e.input_ids) == 40
    text = tok.decode(e.input_ids)
    assert text.endswith(SEP + " 4 stars\nEND<|endoftext|>")
    assert not text.startswith("The battery")  # the start went, not the end
    assert trained(tok, e) == " 4 stars\nEND<|endoftext|>"


def test_a_completion_longer_than_max_length_keeps_its_start(tok):
    completion = " Great product, works as described and arrived on time." * 3
    (e,) = encode_sft([pc("Review:", completion)], tok, max_length=12)
    assert e.input_ids == ids(tok, completion)[:12]
    assert e.labels == e.input_ids


def test_eos_is_appended_only_when_asked(tok):
    record = pc("Say hi.", " hi")
    (plain,) = encode_sft([record], tok, max_length=64)
    (stop,) = encode_sft([record], tok, max_length=64, add_eos=True)
    assert tok.eos_token_id not in plain.input_ids
    assert stop.input_ids == plain.input_ids + [tok.eos_token_id]
    assert stop.labels[-1] == tok.eos_token_id  # the model learns to stop


def test_bos_comes_first_when_the_tokenizer_adds_one_and_survives_truncation(bos_tok):
    bos = bos_tok.bos_token_id
    assert bos_tok("x").input_ids[0] == bos
    (short,) = encode_sft([pc("Hi.", " 5")], bos_tok, max_length=64)
    assert short.input_ids == [bos] + ids(bos_tok, "Hi." + SEP) + ids(bos_tok, " 5")
    assert short.labels[0] == IGNORE
    prompt = "Great product. " * 20
    (cut,) = encode_sft([pc(prompt, " 5")], bos_tok, max_length=16)
    whole = ids(bos_tok, prompt + SEP) + ids(bos_tok, " 5")
    assert cut.input_ids == [bos] + whole[-15:]  # BOS, then the end: separator and answer
    assert cut.input_ids.count(bos) == 1


def test_chat_with_a_template_trains_on_assistant_turns_only(chat_tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Rate: great product"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "Rate: it broke"},
        {"role": "assistant", "content": "1"},
    ]
    (e,) = encode_sft([{"messages": messages}], chat_tok, max_length=256)
    whole = chat_tok.apply_chat_template(messages, tokenize=False)
    assert chat_tok.decode(e.input_ids) == whole
    spans, run = [], []
    for y in e.labels + [IGNORE]:
        if y != IGNORE:
            run.append(y)
        elif run:
            spans.append(chat_tok.decode(run))
            run = []
    assert spans == ["5<|endoftext|>\n", "1<|endoftext|>\n"]  # answer + end-of-turn marker


def test_chat_template_that_rewrites_earlier_turns_trains_the_last_answer(chat_tok):
    chat_tok.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>"
        "{% if m.role == 'assistant' and not loop.last %}[old]"
        "{% else %}{{ m.content }}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "second"},
    ]
    (e,) = encode_sft([{"messages": messages}], chat_tok, max_length=256)
    assert chat_tok.decode(e.input_ids) == "<|user|>a<|assistant|>[old]<|user|>b<|assistant|>second"
    assert trained(chat_tok, e) == "second"  # jinja's trim_blocks ate the newlines


def test_chat_without_a_template_uses_role_lines(tok):
    messages = [{"role": "user", "content": "Rate it"}, {"role": "assistant", "content": "5"}]
    (e,) = encode_sft([{"messages": messages}], tok, max_length=64)
    assert tok.decode(e.input_ids) == "user: Rate it\nassistant: 5\n"
    assert trained(tok, e) == "5\n"
    (stop,) = encode_sft([{"messages": messages}], tok, max_length=64, add_eos=True)
    assert trained(tok, stop) == "5\n<|endoftext|>"


def test_chat_truncation_drops_the_start_and_keeps_the_last_answer(chat_tok):
    messages = [
        {"role": "user", "content": "Great product, works well. " * 20},
        {"role": "assistant", "content": "5"},
    ]
    (e,) = encode_sft([{"messages": messages}], chat_tok, max_length=20)
    assert len(e.input_ids) == 20
    assert chat_tok.decode(e.input_ids).endswith("<|assistant|>5<|endoftext|>\n")
    assert trained(chat_tok, e) == "5<|endoftext|>\n"


def test_chat_template_bos_stays_first_when_truncating(bos_tok):
    bos_tok.chat_template = "{{ bos_token }}" + TEMPLATE
    messages = [
        {"role": "user", "content": "Great product. " * 20},
        {"role": "assistant", "content": "5"},
    ]
    (e,) = encode_sft([{"messages": messages}], bos_tok, max_length=16)
    assert len(e.input_ids) == 16 and e.input_ids[0] == bos_tok.bos_token_id
    # BOS, and the answer's end-of-turn marker (the user turn's was cut off)
    assert e.input_ids.count(bos_tok.bos_token_id) == 2
    assert trained(bos_tok, e) == "5<|endoftext|>\n"


def test_a_chat_template_that_refuses_a_conversation_names_file_and_line(chat_tok, tmp_path):
    chat_tok.chat_template = (
        "{% if messages[0].role == 'system' %}"
        "{{ raise_exception('no system messages') }}{% endif %}" + TEMPLATE
    )
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                ]
            },
        ],
    )
    with pytest.raises(DataError, match=rf"{path}:2: field 'messages': .*no system messages"):
        encode_sft(read_examples(path), chat_tok, max_length=64)
    with pytest.raises(DataError, match=rf"{path}:2: field 'messages': .*no system messages"):
        encode_classify(read_examples(path), chat_tok, max_length=64, labels=["b"])
    with pytest.raises(DataError, match=rf"{path}:2: field 'messages': .*no system messages"):
        encode_lm(read_examples(path), chat_tok, max_length=64)


def test_sft_rejects_raw_text_and_chats_without_an_answer(tok, tmp_path):
    with pytest.raises(DataError, match="raw text"):
        encode_sft([{"text": "hello"}], tok, max_length=16)
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            {"messages": [{"role": "user", "content": "only a question"}]},
        ],
    )
    with pytest.raises(DataError) as info:
        encode_sft(read_examples(path), tok, max_length=16)
    assert info.value.problems[0].file == str(path) and info.value.problems[0].line == 2
    assert info.value.problems[0].field == "messages"


# --- language modelling ---------------------------------------------------------------------


def test_lm_packing_gives_full_chunks_covering_every_token(tok):
    texts = [f"Review {i}: the battery lasts a long time." * (1 + i % 4) for i in range(30)]
    encoded = encode_lm([{"text": t} for t in texts], tok, max_length=32)
    stream = [t for text in texts for t in ids(tok, text) + [tok.eos_token_id]]
    assert all(len(e.input_ids) == 32 for e in encoded[:-1])
    assert all(e.labels == e.input_ids for e in encoded)
    joined = [t for e in encoded for t in e.input_ids]
    last = len(stream) % 32
    if last == 0 or last >= 32 // 4:
        assert joined == stream
    else:  # a short remainder is dropped
        assert joined == stream[:-last]


def test_lm_drops_a_short_last_chunk_but_keeps_a_long_one(tok):
    one = ids(tok, "Terrible.") + [tok.eos_token_id]  # a few tokens per document
    n = len(one)
    short = encode_lm([{"text": "Terrible."}] * (16 // n + 1), tok, max_length=16)
    remainder = (n * (16 // n + 1)) % 16
    assert len(short) == (1 if remainder < 4 else 2)
    assert [len(e.input_ids) for e in encode_lm([{"text": "Terrible."}], tok, 64)] == [n]


def test_lm_without_packing_gives_one_truncated_sequence_per_text(tok):
    texts = ["It is okay.", "Great product, works as described and arrived on time. " * 5]
    encoded = encode_lm([{"text": t} for t in texts], tok, max_length=20, pack=False)
    assert encoded[0].input_ids == ids(tok, texts[0]) + [tok.eos_token_id]
    assert encoded[1].input_ids == ids(tok, texts[1])[:20]
    assert all(e.labels == e.input_ids for e in encoded)


def test_lm_trains_prompt_completion_as_one_text(tok):
    (e,) = encode_lm([pc("It broke.", " 1")], tok, max_length=64)
    assert tok.decode(e.input_ids) == "It broke." + SEP + " 1<|endoftext|>"


# --- classification -------------------------------------------------------------------------


def test_classify_gives_class_indices_and_no_token_labels(tok):
    records = [pc("Great.", " 5"), pc("Broke.", " 1\n"), pc("Fine.", " 3")]
    names = label_names(records)
    assert names == ["1", "3", "5"]
    encoded = encode_classify(records, tok, max_length=64, labels=names)
    assert [e.label for e in encoded] == [2, 0, 1]
    assert encoded[0].input_ids == ids(tok, "Great.")  # a head reads no separator
    assert all(e.labels == [] for e in encoded)


def test_classify_keeps_cls_and_sep_when_truncating(bert_tok):
    records = [pc("great product works well " * 30, " 5"), pc("terrible", " 1")]
    encoded = encode_classify(records, bert_tok, max_length=16, labels=["1", "5"])
    cls, sep = bert_tok.cls_token_id, bert_tok.sep_token_id
    assert len(encoded[0].input_ids) == 16
    assert (
        encoded[0].input_ids
        == bert_tok(records[0]["prompt"], truncation=True, max_length=16).input_ids
    )
    assert encoded[1].input_ids[0] == cls and encoded[1].input_ids[-1] == sep
    assert [e.label for e in encoded] == [1, 0]


def test_classify_unknown_label_names_file_line_and_field(tok, tmp_path):
    path = write_jsonl(tmp_path / "valid.jsonl", [pc("a", " 1"), pc("b", " 2"), pc("c", " 7")])
    with pytest.raises(DataError) as info:
        encode_classify(read_examples(path), tok, max_length=32, labels=["1", "2"])
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.field) == (str(path), 3, "completion")
    assert f"{path}:3" in str(info.value) and "'7'" in str(info.value)


def test_classify_chat_uses_the_last_assistant_message_as_label(chat_tok):
    messages = [{"role": "user", "content": "Rate: great"}, {"role": "assistant", "content": "5"}]
    assert label_names([{"messages": messages}]) == ["5"]
    (e,) = encode_classify([{"messages": messages}], chat_tok, max_length=64, labels=["1", "5"])
    assert e.label == 1
    assert chat_tok.decode(e.input_ids) == "<|user|>Rate: great<|endoftext|>\n<|assistant|>"


# --- reading and format errors --------------------------------------------------------------


def test_detect_format_from_keys(tok):
    assert detect_format([pc("a", " b")]) == "prompt-completion"
    assert detect_format([{"messages": [{"role": "user", "content": "x"}]}]) == "chat"
    assert detect_format([{"text": "x"}]) == "text"


def test_mixed_or_unknown_formats_name_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [pc("a", " 1"), {"text": "x"}, pc("b", " 2")])
    with pytest.raises(DataError) as info:
        read_examples(path)
    assert str(info.value).startswith(f"{path}:2: ")
    unknown = write_jsonl(tmp_path / "other.jsonl", [{"question": "a"}])
    with pytest.raises(DataError, match=rf"{unknown}:1: unknown format"):
        read_examples(unknown)


def test_bad_json_lines_and_bad_fields_name_file_line_and_field(tmp_path):
    bad_json = write_jsonl(tmp_path / "train.jsonl", [pc("a", " 1"), "{not json"])
    with pytest.raises(DataError, match=rf"{bad_json}:2: invalid JSON"):
        read_examples(bad_json)
    bad_field = write_jsonl(
        tmp_path / "valid.jsonl",
        [pc("a", " 1"), {"prompt": "b", "completion": 5}, {"messages": "x"}],
    )
    with pytest.raises(DataError) as info:
        read_examples(bad_field)
    where = [(p.line, p.field) for p in info.value.problems]
    assert where == [(2, "completion"), (3, None)]  # line 3 is another format altogether
    chat = write_jsonl(
        tmp_path / "test.jsonl",
        [{"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}],
    )
    with pytest.raises(DataError, match=rf"{chat}:1: field 'messages\[1\].role'"):
        read_examples(chat)


def test_read_examples_keeps_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [pc("a", " 1"), pc("b", " 2")])
    records = read_examples(path)
    assert [(r.file, r.line) for r in records] == [(str(path), 1), (str(path), 2)]
    assert records[1].fields["completion"] == " 2"


# --- the sampler ----------------------------------------------------------------------------


def padding_share(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / padded


@pytest.fixture(scope="module")
def lengths() -> list[int]:
    rng = random.Random(0)
    return [int(rng.lognormvariate(4, 1)) + 1 for _ in range(2003)]


def test_sampler_yields_every_index_once_per_epoch(lengths):
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == -(-len(lengths) // 8)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    dropped = LengthGroupedSampler(lengths, batch_size=8, seed=1, drop_last=True)
    assert len(dropped) == len(dropped.batches(0)) == len(lengths) // 8
    assert all(len(b) == 8 for b in dropped.batches(0))


def test_sampler_batches_hold_similar_lengths(lengths):
    grouped = LengthGroupedSampler(lengths, batch_size=8, seed=1).batches(0)
    order = list(range(len(lengths)))
    random.Random(1).shuffle(order)
    plain = [order[s : s + 8] for s in range(0, len(order), 8)]
    assert padding_share(plain, lengths) > 0.4
    assert padding_share(grouped, lengths) < 0.1
    assert padding_share(grouped, lengths) < padding_share(plain, lengths) / 5


def test_sampler_is_deterministic_per_seed_and_epoch_and_differs_across_epochs(lengths):
    a = LengthGroupedSampler(lengths, batch_size=8, seed=7)
    b = LengthGroupedSampler(lengths, batch_size=8, seed=7)
    assert a.batches(3) == b.batches(3)
    assert a.batches(0) != a.batches(1)
    assert a.batches(0) != LengthGroupedSampler(lengths, batch_size=8, seed=8).batches(0)
    first = a.batches(2)[0]
    assert max(lengths[i] for i in first) == max(lengths)  # out of memory shows on step one


def test_sampler_without_shuffle_is_the_same_every_epoch(lengths):
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=7, shuffle=False)
    assert sampler.batches(0) == sampler.batches(5)
    assert sorted(i for b in sampler.batches(0) for i in b) == list(range(len(lengths)))


@pytest.mark.parametrize("n", [2003, 13, 1, 96])
def test_data_parallel_ranks_together_see_the_single_process_batches(lengths, n):
    b, world = 3, 2
    single = LengthGroupedSampler(lengths[:n], batch_size=b * world, seed=5).batches(4)
    ranks = [
        LengthGroupedSampler(lengths[:n], batch_size=b, seed=5, rank=r, world_size=world).batches(4)
        for r in range(world)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for step, batch in enumerate(single):
        assert all(ranks[r][step] for r in range(world))  # no rank ever gets an empty batch
        together = ranks[0][step] + ranks[1][step]
        if len(batch) >= world:
            assert together == batch  # contiguous slices of the global batch, in rank order
        else:  # fewer examples than ranks: repeated, so that every rank has one
            assert set(together) == set(batch)
        if len(batch) == b * world:
            assert len(ranks[0][step]) == len(ranks[1][step]) == b


def test_sampler_resumes_from_a_batch_position(lengths):
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    full = sampler.batches(2)
    sampler.set_epoch(2, start=40)
    assert list(sampler) == full[40:]
    restarted = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    restarted.set_epoch(2, start=40)
    assert list(restarted) == full[40:]


def test_sampler_rejects_bad_ranks():
    with pytest.raises(ValueError):
        LengthGroupedSampler([1, 2], batch_size=1, seed=0, rank=2, world_size=2)


# --- collate --------------------------------------------------------------------------------


def test_collate_right_pads_and_masks():
    batch = [Encoded([5, 6, 7], [IGNORE, 6, 7]), Encoded([8], [8])]
    out = collate(batch, pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert out["input_ids"].dtype == torch.long and "weights" not in out and "label" not in out


def test_collate_weights_are_zero_on_padding_and_ignored_tokens():
    batch = [Encoded([5, 6, 7], [5, 6, 7], [0.1, 0.1, 1.0]), Encoded([8, 9], [IGNORE, 9])]
    out = collate(batch, pad_id=0)
    assert out["weights"].dtype == torch.float
    assert out["weights"].flatten().tolist() == pytest.approx([0.1, 0.1, 1.0, 0.0, 1.0, 0.0])


def test_collate_classification_gives_the_class_indices():
    out = collate([Encoded([1, 2, 3], [], None, 2), Encoded([4], [], None, 0)], pad_id=9)
    assert out["label"].tolist() == [2, 0]
    assert out["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert "labels" not in out


def test_collate_pads_with_zero_when_the_tokenizer_has_no_pad_id():
    out = collate([Encoded([5, 6], [5, 6]), Encoded([7], [7])], pad_id=None)
    assert out["input_ids"].tolist() == [[5, 6], [7, 0]]


def test_collate_of_real_encodings(tok):
    encoded = encode_sft([pc("Great product.", " 5"), pc("No.", " 1")], tok, 64)
    out = collate(encoded, pad_id=tok.eos_token_id)
    width = max(len(e.input_ids) for e in encoded)
    assert out["input_ids"].shape == out["labels"].shape == (2, width)
    assert out["attention_mask"].sum().item() == sum(len(e.input_ids) for e in encoded)


# --- real data ------------------------------------------------------------------------------


def test_marc_reviews_encode_and_batch_with_little_padding(tok, marc):
    with open(marc / "en" / "train.csv", newline="", encoding="utf-8") as f:
        records = [pc(row["review_body"], " " + row["stars"]) for row in csv.DictReader(f)]
    assert len(records) == 12_465
    encoded = encode_sft(records, tok, max_length=256)  # speed: bench/batches.py
    for e, r in zip(encoded[:200], records):
        assert trained(tok, e) == r["completion"]
    assert all(len(e.input_ids) <= 256 for e in encoded)
    classes = encode_classify(records, tok, 256, label_names(records))
    assert {e.label for e in classes} == {0, 1, 2, 3, 4}
    lengths = [len(e.input_ids) for e in encoded]
    batches = LengthGroupedSampler(lengths, batch_size=16, seed=0).batches(0)
    assert padding_share(batches, lengths) < 0.05


def test_split_by_tokens_cuts_long_batches_into_trimmed_row_slices_and_keeps_short_ones():
    from trimtab.training.batches import split_by_tokens

    lengths = [9, 8, 3, 2, 2]
    batch = collate(
        [Encoded(list(range(1, n + 1)), list(range(1, n + 1)), None) for n in lengths], 0
    )
    assert split_by_tokens(batch, None) == [batch]
    assert split_by_tokens(batch, 45) == [batch]  # 5 rows x 9 tokens fit
    pieces = split_by_tokens(batch, 20)  # 2 rows of the padded width 9 per slice
    assert [p["input_ids"].shape for p in pieces] == [(2, 9), (2, 3), (1, 2)]
    start = 0
    for piece in pieces:
        rows, width = piece["input_ids"].shape
        for key in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(piece[key], batch[key][start : start + rows, :width])
        assert not batch["attention_mask"][start : start + rows, width:].any()  # only padding cut
        start += rows
    assert sum(int(p["attention_mask"].sum()) for p in pieces) == sum(lengths)
    # A budget below one row still makes progress: one row per slice.
    assert [len(p["input_ids"]) for p in split_by_tokens(batch, 4)] == [1] * 5
