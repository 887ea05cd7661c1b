"""Shared fixtures: a tiny tokenizer built from a config (never downloaded) and the MARC data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
MARC = SHARED_DATA / "marc"

CORPUS = [
    "Great product, works as described and arrived on time.",
    "Terrible. It broke after one day and the seller never answered.",
    "It is okay for the price, nothing special.",
    "I love it! My daughter uses it every day.",
    "The battery lasts a long time but the screen scratches easily.",
    "1 2 3 4 5 stars rating review",
]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test writes to the user's real cache; no test reaches the hub."""
    if "TRIMTAB_HOME" not in os.environ:
        monkeypatch.setenv("TRIMTAB_HOME", str(tmp_path_factory.getbasetemp() / "trimtab-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch):
    """Fail any test that tries to reach the network. Libraries turn connection errors into
    their own (or retry quietly), so every attempt is recorded and checked at the end."""
    import socket

    attempts: list[object] = []
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def loopback(address: object) -> bool:
        # Tests may talk to a server they started themselves on this machine.
        host = address[0] if isinstance(address, tuple) and address else address
        return host in ("127.0.0.1", "localhost", "::1")

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if loopback(host):
            return real_getaddrinfo(host, *args, **kwargs)
        attempts.append((host, *args))
        raise OSError("tests must not use the network")

    def connect(self: socket.socket, address: object) -> object:
        if loopback(address):
            return real_connect(self, address)
        attempts.append((address,))
        raise OSError("tests must not use the network")

    def connect_ex(self: socket.socket, address: object) -> object:
        if loopback(address):
            return real_connect_ex(self, address)
        attempts.append((address,))
        raise OSError("tests must not use the network")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield
    assert not attempts, f"the test tried to reach the network: {attempts}"


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer of ~300 tokens, trained here on a few sentences.

    Like SmolLM2's, it splits the label " 5" into a space and a digit, so multi-token label
    checks have something to find.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS * 5, trainer)
    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="session")
def marc() -> Path:
    """The MARC data beside the project (../shared/data/marc); skip cleanly if absent."""
    if not MARC.exists():
        pytest.skip(f"MARC data not found at {MARC}")
    return MARC


def _tiny_model_dir(tmp_path_factory, tokenizer_dir: Path, kind: str) -> Path:
    """A tiny randomly initialised model saved with the tiny tokenizer, like a hub folder."""
    import shutil

    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = len(tokenizer)
    if kind == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=256,
                tie_word_embeddings=True,
                eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.eos_token_id,
            )
        )
    else:
        model = BertForMaskedLM(
            BertConfig(
                vocab_size=vocab,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=256,
            )
        )
    folder = tmp_path_factory.mktemp(f"tiny-{kind}")
    model.save_pretrained(folder, safe_serialization=True)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A 2-layer, 32-wide Llama (SmolLM2's architecture, tied embeddings) built from a config."""
    return _tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir, "llama")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A 2-layer, 32-wide BERT encoder (MiniLM's architecture) built from a config."""
    return _tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir, "bert")


REVIEW_WORDS = {"1": "terrible awful broke", "5": "great love works"}


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    """Prepared data (as trimtab prepare writes it): 48 train and 16 valid reviews, 2 labels
    that the words give away."""
    import json

    rows = [
        {"prompt": f"review {i}: {REVIEW_WORDS[s]}\n\n###\n\n", "completion": f" {s}"}
        for i in range(64)
        for s in (("5",) if i % 2 else ("1",))
    ]
    folder = tmp_path / "data"
    folder.mkdir()
    for name, part in (("train", rows[:48]), ("valid", rows[48:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder
