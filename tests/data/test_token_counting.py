"""Exact token counts by pieces (trimtab.data.tokens.count_tokens): every text counts what the
tokenizer itself counts, whether it is split in Python and summed by piece or left to the
tokenizer (another pipeline, an added token in the text, a character no probe places)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from tests.conftest import CORPUS
from trimtab.data import tokens
from trimtab.data.tokens import count_tokens

TRICKY = [
    "",
    " ",
    "\t",
    "   lead and trail   ",
    "\r\n\r\n",
    "tab\t\t\tx  y \n z",
    "It's 12 o'clock; it'S we'LL they've ''s x'",
    "Great product, works as described!!! 10/10 --- 3.5 stars",
    "under_score __init__ a_b",
    "a\u00a0b no-break space, x\u2028y line separator, \u200b zero width, \x85 next line",
    "e\u0301t\u0301e combining accents, café, İstanbul, straße, ﬁ ligature",
    "日本語のテキスト 123 and Ǆǅǆ",
    "١٢٣ arabic digits ٤, ²³ ½ Ⅷ numbers of other kinds",
    "control \x1c\x1d\x1e\x1f and \x00 \x07 \x7f characters",
    "emoji 👍🏽 👩‍👩‍👧 ☹️ 😂",
    "x" * 150,
    "Great product\n\n###\n\n",
    " 5",
]


def reference(rust: Any, texts: list[str]) -> list[int]:
    return [len(rust.encode(t, add_special_tokens=False).ids) for t in texts]


@pytest.fixture
def byte_level(tiny_tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))


@pytest.fixture
def wordpiece() -> Tokenizer:
    """A tiny BERT-style tokenizer: BertNormalizer (lower case), BertPreTokenizer, WordPiece."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=20))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", "[MASK]"])
    tokenizer.train_from_iterator(CORPUS * 5, trainer)
    return tokenizer


def test_pieces_count_as_the_byte_level_tokenizer_on_tricky_text(byte_level: Tokenizer) -> None:
    assert tokens._splitter(byte_level, TRICKY) is not None  # counted by pieces, not per text
    assert count_tokens(byte_level, TRICKY) == reference(byte_level, TRICKY)


def test_pieces_count_as_the_wordpiece_tokenizer_on_tricky_text(wordpiece: Tokenizer) -> None:
    texts = [*TRICKY, "UPPER case WORDS", "[MASK] and [mask] stay whole", "don't (stop) me-now"]
    assert tokens._splitter(wordpiece, texts) is not None
    assert count_tokens(wordpiece, texts) == reference(wordpiece, texts)


def test_a_text_holding_an_added_token_counts_it_as_one_token(byte_level: Tokenizer) -> None:
    texts = ["before<|endoftext|>after", "no token here", "<|endoftext|>"]
    counts = count_tokens(byte_level, texts)
    assert counts == reference(byte_level, texts)
    assert counts[2] == 1


def test_a_character_no_probe_places_is_left_to_the_tokenizer(byte_level: Tokenizer) -> None:
    # A probe that places nothing outside ASCII: such texts must go to the tokenizer whole.
    real = byte_level.pre_tokenizer

    class Refusing:
        def pre_tokenize_str(self, text: str) -> Any:
            if not text.isascii():
                raise ValueError("refused")
            return real.pre_tokenize_str(text)

    split = tokens._ByteLevel(Refusing(), TRICKY)
    assert split("plain ascii") == ["plain", " ascii"]
    assert split("café") is None
    assert count_tokens(byte_level, TRICKY) == reference(byte_level, TRICKY)


def test_a_pipeline_without_a_known_split_is_counted_by_the_tokenizer(
    byte_level: Tokenizer,
) -> None:
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert tokens._splitter(byte_level, TRICKY) is None
    assert count_tokens(byte_level, TRICKY) == reference(byte_level, TRICKY)

    metaspace = Tokenizer(models.BPE(unk_token="[UNK]"))
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()
    metaspace.decoder = decoders.Metaspace()
    metaspace.train_from_iterator(CORPUS * 5, trainers.BpeTrainer(special_tokens=["[UNK]"]))
    assert tokens._splitter(metaspace, TRICKY) is None
    assert count_tokens(metaspace, TRICKY) == reference(metaspace, TRICKY)


def test_a_split_that_disagrees_with_the_tokenizer_is_not_used(
    byte_level: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "_BYTE_LEVEL", r"[{L}{N}]+|[^{L}{N}]")  # not GPT-2's split
    assert tokens._splitter(byte_level, TRICKY) is None
    assert count_tokens(byte_level, TRICKY) == reference(byte_level, TRICKY)


SPACES = [
    " leading",
    "trailing ",
    "  two leading",
    "double  space",
    "three   spaces",
    "line\n next",
    "tab\t next",
    "no-break\u00a0 next",
    "end.\n\n###\n\n",
    "word 's 'll '",
    "a b c d e",
    "  ",
    " ",
]


@pytest.mark.parametrize("name", ["byte_level", "wordpiece"])
def test_words_add_up_to_the_text_wherever_the_spaces_are(
    name: str, request: pytest.FixtureRequest
) -> None:
    tokenizer = request.getfixturevalue(name)
    texts = [*SPACES, *(a + b for a in SPACES for b in SPACES)]
    assert count_tokens(tokenizer, texts) == reference(tokenizer, texts)


def test_many_texts_in_several_batches_of_the_tokenizer(
    byte_level: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "CHUNK", 3)  # the texts left to the tokenizer come in batches
    texts = [f"{CORPUS[i % len(CORPUS)]} <|endoftext|> {i}" for i in range(20)] + TRICKY
    assert count_tokens(byte_level, texts) == reference(byte_level, texts)


def marc_prompts(marc: Path, n: int) -> list[str]:
    with open(marc / "en" / "train.csv", encoding="utf-8", newline="") as f:
        rows = [r["review_body"] for _, r in zip(range(n), csv.DictReader(f))]
    return [body + "\n\n###\n\n" for body in rows]


def test_marc_reviews_count_as_the_tokenizer_counts_them(
    marc: Path, byte_level: Tokenizer, wordpiece: Tokenizer
) -> None:
    prompts = marc_prompts(marc, 3000)
    for tokenizer in (byte_level, wordpiece):
        assert count_tokens(tokenizer, prompts) == reference(tokenizer, prompts)


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["smollm2-135m", "minilm-l6"])
def test_real_tokenizers_count_marc_reviews_exactly(marc: Path, name: str) -> None:
    from trimtab.models import load_fast_tokenizer

    rust = load_fast_tokenizer(name)
    prompts = marc_prompts(marc, 3000)
    assert tokens._splitter(rust, prompts) is not None
    assert count_tokens(rust, prompts) == reference(rust, prompts)
