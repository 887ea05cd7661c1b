"""Tests for the model catalog: known models, downloaded hub models and fine-tuned runs; pull."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models.test_loading import (
    fake_hub_online,
    install_fake_gguf_package,
    save_with_tokenizer,
    tiny_llama,
)
from trimtab.errors import TrimtabError
from trimtab.models import CatalogEntry, catalog, list_models, model_cache_dir, pull
from trimtab.models.runs import RunFolder


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A cache of this test's own: what the catalog reports must not depend on other tests."""
    monkeypatch.setenv("TRIMTAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def fake_gguf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_tokenizer_dir: Path):
    return install_fake_gguf_package(monkeypatch, tmp_path / "site", tiny_tokenizer_dir)


def write_run(runs: Path, name: str, status: str, *, final: bool = True, **fields: str) -> Path:
    folder = runs / name
    folder.mkdir(parents=True)
    run = {"base_model": "smollm2-135m", "task": "classify", "method": "lora", "status": status}
    (folder / "run.json").write_text(json.dumps(run | fields))
    if final:
        (folder / "final").mkdir()
    return folder


def by_name(entries: list[CatalogEntry]) -> dict[str, CatalogEntry]:
    return {entry.name: entry for entry in entries}


def test_known_models_are_listed_first_even_without_runs(tmp_path: Path):
    entries = list_models(tmp_path / "no-runs-here")
    assert [(e.name, e.kind, e.source) for e in entries] == [
        ("smollm2-135m", "decoder", "package"),
        ("minilm-l6", "encoder", "package"),
        ("mpnet-base", "encoder", "package"),
    ]
    assert all(e.description for e in entries)


def test_gguf_model_is_ready_only_once_converted(fake_gguf: list[str], tmp_path: Path):
    before = by_name(list_models(tmp_path))["smollm2-135m"]
    assert (before.ready, before.path) == (False, None)
    folder = pull("smollm2-135m")
    after = by_name(list_models(tmp_path))["smollm2-135m"]
    assert (after.ready, after.path) == (True, folder)
    assert folder == model_cache_dir("smollm2-135m") / "weights"
    assert fake_gguf == ["tiny.gguf"]
    assert pull("smollm2-135m") == folder and fake_gguf == ["tiny.gguf"]  # pulled once


def test_model_whose_package_is_missing_is_listed_as_not_ready(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    def not_installed(name: str):
        raise TrimtabError(f"model '{name}' is shipped by a package that is not installed")

    monkeypatch.setattr(catalog, "resolve_model", not_installed)
    assert [(e.ready, e.path) for e in list_models(tmp_path)] == [(False, None)] * 3


@pytest.mark.real_model
def test_installed_minilm_is_ready_in_its_package_folder(tmp_path: Path):
    minilm = by_name(list_models(tmp_path))["minilm-l6"]
    assert minilm.ready and (minilm.path / "config.json").is_file()


def test_runs_are_listed_with_their_status_and_readiness(tmp_path: Path):
    runs = tmp_path / "runs"
    done = write_run(runs, "reviews-lora", "completed")
    write_run(runs, "still-training", "running", final=False)
    write_run(runs, "crashed", "failed", final=False, base_model="minilm-l6", method="full")
    write_run(runs, "completed-but-no-final", "completed", final=False)
    (runs / "not-a-run").mkdir()
    entries = by_name(list_models(runs))
    assert "not-a-run" not in entries
    ready = entries["reviews-lora"]
    assert (ready.source, ready.ready, ready.path, ready.status) == (
        "run",
        True,
        done / "final",
        "completed",
    )
    assert (ready.base_model, ready.method, ready.task, ready.kind) == (
        "smollm2-135m",
        "lora",
        "classify",
        "decoder",
    )
    assert "lora" in ready.description and "smollm2-135m" in ready.description
    running = entries["still-training"]
    assert (running.ready, running.path) == (False, runs / "still-training")
    crashed = entries["crashed"]
    assert (crashed.ready, crashed.kind, crashed.method) == (False, "encoder", "full")
    assert not entries["completed-but-no-final"].ready


def test_a_running_run_is_running_only_while_its_process_holds_the_lock(tmp_path: Path):
    runs = tmp_path / "runs"
    write_run(runs, "live", "running", final=False)
    write_run(runs, "dead", "running", final=False)
    write_run(runs, "stopped", "interrupted", final=False, interrupted_step="40")
    with RunFolder(runs / "live").lock():
        entries = by_name(list_models(runs))
    assert entries["live"].status == "running"
    assert entries["dead"].status == "interrupted (process gone)"
    assert "interrupted (process gone)" in entries["dead"].description
    assert entries["stopped"].status == "interrupted at step 40"
    assert by_name(list_models(runs))["live"].status == "interrupted (process gone)"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"status": "completed"}', "\xff"])
def test_unreadable_run_json_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
):
    runs = tmp_path / "runs"
    write_run(runs, "good", "completed")
    (runs / "broken").mkdir()
    (runs / "broken" / "run.json").write_text(content, encoding="latin-1")
    with caplog.at_level(logging.WARNING, logger=catalog.__name__):
        entries = by_name(list_models(runs))
    assert "good" in entries and "broken" not in entries
    assert "skipping" in caplog.text and "broken" in caplog.text


def test_pull_of_an_unknown_name_is_a_user_error_listing_known_models():
    with pytest.raises(TrimtabError, match="unknown model 'smollm3'.*Known models: smollm2-135m"):
        pull("smollm3")


def test_pull_of_a_hub_id_offline_is_a_user_error():
    with pytest.raises(TrimtabError, match="HF_HUB_OFFLINE"):
        pull("someone/some-model")


def test_pulled_hub_model_is_cached_and_listed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_tokenizer_dir: Path
):
    model_dir = save_with_tokenizer(
        tiny_llama(tiny_tokenizer_dir), tiny_tokenizer_dir, tmp_path / "upstream"
    )
    downloads = fake_hub_online(monkeypatch, model_dir)
    folder = pull("someone/tiny-llama")
    assert folder == model_cache_dir("someone--tiny-llama") / "weights"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert pull("someone/tiny-llama") == folder and downloads == ["someone/tiny-llama"]
    hub = by_name(list_models(tmp_path / "runs"))["someone/tiny-llama"]
    assert (hub.source, hub.kind, hub.ready, hub.path) == ("hub", "decoder", True, folder)


def test_listing_models_does_not_import_transformers(tmp_path: Path):
    write_run(tmp_path / "runs", "a-run", "completed")
    code = (
        "import sys; from pathlib import Path; from trimtab.models import list_models; "
        f"assert len(list_models(Path({str(tmp_path / 'runs')!r}))) == 4; "
        "assert 'transformers' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
