"""The models the engine serves: names, loading on first use, and LoRA adapters by LRU.

Every LoRA run on one base model is served from a single copy of the base weights: the base
is wrapped once in a PEFT model and each run's adapter is loaded into it under its own name,
so requests for different fine-tunes share one batch (PEFT's ``adapter_names``). Adapters
load on the first request that names them and the least recently used one leaves when more
than ``max_adapters`` are loaded (never one a running request uses). Full fine-tunes and
classification runs load as their own models.

Model ids are those of ``trimtab models list`` for base models (``smollm2-135m``, a local
folder) and OpenAI-style ``ft:<base>:<org>:<run>:<hash>`` for runs; a run is also found by its
folder name.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import secrets
import shutil
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trimtab.errors import TrimtabError
from trimtab.generation.types import EngineError, ModelInfo, ModelNotFound
from trimtab.models.registry import (
    KNOWN_MODELS,
    quiet_transformers,
    resolve_model,
    weights_part,
)
from trimtab.models.runs import META

_log = logging.getLogger(__name__)
PRECISIONS = ("auto", "fp32", "bf16")
RESCAN_SECONDS = 2.0  # how old the list of runs may be (a run that just completed shows soon)


@dataclass
class Target:
    """What a model id is served by: a loaded model (``group``) and maybe one of its adapters."""

    info: ModelInfo
    group: str  # the loaded model: a base model's name/folder, or a run's model folder
    load_name: str  # what load_model is given for the group
    task: str  # "sft" or "classify"
    adapter: Path | None = None  # a LoRA run's model folder, served on the group's base
    adapter_name: str | None = None
    # The run as the pool found it (info.path is its real folder): a link in the runs folder
    # (a sweep's trial) stays a link here, so that deleting the model removes the link too.
    found: Path | None = None


@dataclass
class Loaded:
    """A model in memory with its tokenizer, the adapters loaded into it, their users."""

    model: Any
    tokenizer: Any
    task: str
    labels: list[str] | None = None
    adapters: OrderedDict[str, Path] = field(default_factory=OrderedDict)  # LRU order
    users: dict[str, int] = field(default_factory=dict)  # adapter -> running requests
    requests: int = 0  # running requests on this model, whatever their adapter


class ModelPool:
    """Resolves model ids, lists them, and loads models and adapters when the engine asks."""

    def __init__(
        self,
        runs_dir: Path | None,
        *,
        org: str = "trimtab",
        max_adapters: int = 8,
        max_models: int = 4,
        preload: Sequence[str] = (),
        device: str | None = None,
        dtype: str = "fp32",
        any_folder: bool = False,
        managed_dirs: Sequence[Path] = (),
    ):
        """``managed_dirs``: folders besides ``runs_dir`` that the server owns (the jobs API's
        ``jobs/`` folder, where a sweep trains its trials): a run linked into ``runs_dir`` is
        deleted with its model only when the link points inside one of them or ``runs_dir``;
        a link pointing elsewhere is only removed (see :meth:`delete`)."""
        if dtype not in PRECISIONS:
            raise TrimtabError(f"precision: one of {', '.join(PRECISIONS)} (got {dtype!r})")
        if max_adapters < 1 or max_models < 1:
            raise TrimtabError(
                f"max_adapters and max_models: must be at least 1 (got {max_adapters}, "
                f"{max_models})"
            )
        self.runs_dir = Path(runs_dir) if runs_dir is not None else None
        self.org, self.max_adapters, self.max_models = org, max_adapters, max_models
        self.preload = [str(p) for p in preload]
        self.device, self.dtype = device, dtype
        # A server must not load whatever folder a client names: only listed models. The
        # command line (the user's own files) may name any model or run folder.
        self.any_folder = any_folder
        self.managed_dirs = [Path(d) for d in managed_dirs]
        self._lock = threading.RLock()
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()  # least recently used first
        self._tokenizers: dict[str, Any] = {}
        self._started = int(time.time())
        self._scanned: tuple[float, dict[str, Target]] | None = None

    # --- names -------------------------------------------------------------------------------

    def list(self) -> list[ModelInfo]:
        """Base models that can be loaded here, the preloaded ones, every completed run."""
        seen: dict[str, ModelInfo] = {}
        for name in [*self.preload, *self._known_decoders()]:
            seen.setdefault(name, self._base_info(name))
        for target in self._runs(fresh=True).values():
            seen.setdefault(target.info.id, target.info)
        return list(seen.values())

    def info(self, model_id: str) -> ModelInfo:
        """The model of that id; raises :class:`ModelNotFound`."""
        return self.target(model_id).info

    def target(self, model_id: str) -> Target:
        """How a model id is served; raises :class:`ModelNotFound`."""
        runs = self._runs()
        base = model_id in self.preload or model_id in KNOWN_MODELS
        found = _find_run(runs, model_id)
        if found is None and not base:
            found = _find_run(self._runs(fresh=True), model_id)  # completed since the last look
        if found is not None:
            return found
        path = Path(model_id).expanduser()
        if model_id.startswith("ft:") or not (
            self.any_folder or model_id in self.preload or model_id in KNOWN_MODELS
        ):
            raise _not_found(model_id)
        if path.is_dir() and ((path / "final" / META).is_file() or (path / META).is_file()):
            return self._run_target(path)
        return self._base_target(model_id)

    def delete(self, model_id: str) -> ModelInfo:
        """Delete a fine-tuned model's run folder; base models cannot be deleted.

        A run whose folder in the runs folder is a link (a sweep's trial, linked to its sweep's
        folder) loses the link and the folder it points to, but only when that folder lies
        inside the runs folder or a managed folder (``managed_dirs``): a link pointing
        elsewhere (someone's own run, linked in to serve it) is removed and its folder kept.
        The model leaves atomically: its folder is renamed away first (a rename is atomic), so
        a scan sees the whole model or none, never one half deleted.
        """
        target = self.target(model_id)
        if not target.info.fine_tuned or target.info.path is None:
            raise EngineError(
                f"{model_id} is a base model; only fine-tuned models can be deleted",
                param="model",
            )
        with self._lock:
            loaded = self._loaded.get(target.group)
            if loaded and target.adapter_name and loaded.users.get(target.adapter_name):
                raise EngineError(f"{model_id} is answering requests now; retry once they end")
            found = target.found or Path(target.info.path)
            link, real = found.is_symlink(), Path(target.info.path)
            owned = self._owned(real)
            if not link and not owned and self._under_runs(found):
                raise EngineError(
                    f"{model_id}: its folder {real} is reached through a link out of the runs "
                    "folder, so the server does not delete it; remove that link instead",
                    param="model",
                )
            name = target.adapter_name
            if loaded and name and name in loaded.adapters:
                loaded.model.delete_adapter(name)
                del loaded.adapters[name]
            if target.adapter is None:
                self._loaded.pop(target.group, None)
            _remove(found, real if owned or not link else None)
            self._scanned = None
        return target.info

    def _roots(self) -> builtins.list[Path]:
        """The folders the server owns, resolved: the runs folder and the managed ones."""
        roots = [self.runs_dir, *self.managed_dirs] if self.runs_dir else self.managed_dirs
        return [r.resolve() for r in roots]

    def _owned(self, real: Path) -> bool:
        """Whether ``real`` (resolved) lies strictly inside a folder the server owns and holds
        none of them (a link to a parent folder must never take the runs folder with it)."""
        roots = self._roots()
        inside = any(root in real.parents for root in roots)
        return inside and not any(real == root or real in root.parents for root in roots)

    def _under_runs(self, path: Path) -> bool:
        """Whether ``path``, as written (links not followed), lies in the runs folder."""
        if self.runs_dir is None:
            return False
        return self.runs_dir.absolute() in path.absolute().parents

    def tokenizer(self, model_id: str) -> Any:
        """The tokenizer of a model (loaded once per loaded model, without its weights)."""
        from trimtab.models.registry import load_tokenizer

        target = self.target(model_id)
        with self._lock:
            if target.group in self._loaded:
                return self._loaded[target.group].tokenizer
            if target.group not in self._tokenizers:
                self._tokenizers[target.group] = load_tokenizer(target.load_name)
            return self._tokenizers[target.group]

    def context_length(self, target: Target) -> int | None:
        """The most positions the model of ``target`` takes, from its config (no weights
        loaded); None when its config does not say or cannot be read yet."""
        with self._lock:
            loaded = self._loaded.get(target.group)
        if loaded is not None:
            value = getattr(loaded.model.config.get_text_config(), "max_position_embeddings", None)
            return value if isinstance(value, int) else None
        config = _read_config(self._config_folder(target))
        value = config.get("max_position_embeddings")
        if value is None and isinstance(config.get("text_config"), dict):
            value = config["text_config"].get("max_position_embeddings")
        return value if isinstance(value, int) else None

    def _config_folder(self, target: Target) -> Path | None:
        """The folder holding the config.json of the model that serves ``target``."""
        if target.adapter is None and target.info.fine_tuned:
            return Path(target.group)  # a full or classification run: its own model folder
        try:
            resolved = resolve_model(target.load_name)
        except TrimtabError:
            return None
        part = weights_part(resolved)
        return part.folder if part is not None and part.complete else resolved.path

    def render_chat(self, model_id: str, messages: Sequence[Mapping[str, Any]]) -> str:
        """The conversation through the model's chat template, ending with the reply's start."""
        from trimtab.models.chat import TemplateRefused, render_chat

        try:
            return render_chat(self.tokenizer(model_id), messages, add_generation_prompt=True)
        except TemplateRefused as exc:
            raise EngineError(str(exc), param="messages") from exc

    # --- loading (engine thread) -------------------------------------------------------------

    def acquire(self, target: Target) -> Loaded:
        """The loaded model serving ``target``, its adapter loaded; counts one more user."""
        with self._lock:
            loaded = self._loaded.get(target.group)
            if loaded is None:
                loaded = self._loaded[target.group] = self._load(target)
                self._evict_models()
            self._loaded.move_to_end(target.group)
            if target.adapter is not None and target.adapter_name is not None:
                self._ensure_adapter(loaded, target.adapter_name, target.adapter)
                loaded.users[target.adapter_name] = loaded.users.get(target.adapter_name, 0) + 1
            loaded.requests += 1
            return loaded

    def is_loaded(self, group: str) -> bool:
        """True while the model of ``group`` is in memory (the engine drops idle lanes of
        models that left)."""
        return group in self._loaded

    def _evict_models(self) -> None:
        """Beyond ``max_models`` loaded, the least recently used idle models leave memory
        (never one answering a request; the newest, just loaded, is last in line)."""
        idle = [g for g, m in self._loaded.items() if m.requests == 0]
        while len(self._loaded) > self.max_models and len(idle) > 1:
            group = idle.pop(0)
            del self._loaded[group]
            _log.info("unloaded %s (least recently used model)", group)

    def release(self, target: Target) -> None:
        """One user of ``target``'s adapter fewer (its request ended)."""
        with self._lock:
            loaded = self._loaded.get(target.group)
            name = target.adapter_name
            if loaded is not None and name is not None and loaded.users.get(name):
                loaded.users[name] -= 1
            if loaded is not None and loaded.requests:
                loaded.requests -= 1

    def _load(self, target: Target) -> Loaded:
        import torch

        from trimtab.models.loading import load_model

        task = "classify" if target.task == "classify" else "sft"
        result = load_model(target.load_name, task)  # type: ignore[arg-type]
        model = result.model.eval()
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device, dtype=self._torch_dtype(torch.device(device)))
        _log.info("loaded %s on %s", target.load_name, device)
        return Loaded(model, result.tokenizer, task, labels=result.labels)

    def _torch_dtype(self, device: Any) -> Any:
        """bf16 weights for "bf16", and for "auto" where a measured bf16 matmul is faster
        (GPUs that support it; CPUs with AMX or AVX512-BF16, not AVX2-only ones): half the
        bytes to read per token, the same rule as training's precision auto. fp32 otherwise."""
        import torch

        from trimtab.models.precision import decide_precision

        if self.dtype == "auto":
            decision = decide_precision(device)
            _log.info(decision.describe())
            bf16 = decision.precision == "bf16"
        else:
            bf16 = self.dtype == "bf16"
        return torch.bfloat16 if bf16 else torch.float32

    def _ensure_adapter(self, loaded: Loaded, name: str, folder: Path) -> None:
        """Load an adapter into the shared base, making room by LRU; mark it recently used."""
        from peft import PeftModel

        if name in loaded.adapters:
            loaded.adapters.move_to_end(name)
            return
        with quiet_transformers(), warnings.catch_warnings():
            # peft 0.21 calls an API that transformers 5 deprecates; nothing for users to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            if isinstance(loaded.model, PeftModel):
                loaded.model.load_adapter(str(folder), adapter_name=name)
            else:
                loaded.model = PeftModel.from_pretrained(
                    loaded.model, str(folder), adapter_name=name
                )
        # Rows name their adapter (adapter_names); the active one only has to exist, so the
        # newest is made active before an old one leaves (PEFT refuses a deleted active one).
        loaded.model.set_adapter(name)
        idle = [a for a in loaded.adapters if not loaded.users.get(a)]
        while len(loaded.adapters) >= self.max_adapters and idle:
            old = idle.pop(0)
            loaded.model.delete_adapter(old)
            del loaded.adapters[old]
            _log.info("unloaded adapter %s (least recently used)", old)
        loaded.model.eval()
        loaded.adapters[name] = folder

    # --- resolution --------------------------------------------------------------------------

    def _runs(self, *, fresh: bool = False) -> dict[str, Target]:
        """Every completed run under the runs folder, by ft: id (rescanned when ``fresh`` or
        every few seconds, not on every call: one request asks several times)."""
        now = time.monotonic()
        if not fresh and self._scanned and now - self._scanned[0] < RESCAN_SECONDS:
            return self._scanned[1]
        found = self._scan()
        self._scanned = (now, found)
        return found

    def _scan(self) -> dict[str, Target]:
        if self.runs_dir is None or not self.runs_dir.is_dir():
            return {}
        found = {}
        # Hidden folders are not runs: delete() renames a run to one before removing it.
        folders = (p for p in self.runs_dir.iterdir() if p.is_dir() and p.name[0] != ".")
        for folder in sorted(folders):
            for model in _servable_folders(folder):
                try:
                    target = self._run_target(model)
                except TrimtabError as exc:  # one broken run hides itself, not the others
                    _log.warning("skipping %s: %s", model, exc)
                    continue
                found[target.info.id] = target
        return found

    def _run_target(self, folder: Path) -> Target:
        """A run folder (or its final/) as a servable model."""
        try:
            resolved = resolve_model(folder)
        except TrimtabError as exc:
            raise EngineError(str(exc), param="model") from exc
        model_dir = resolved.path
        assert model_dir is not None
        meta = resolved.run_meta or {}
        base, task = str(meta.get("base_model")), str(meta.get("task", "sft"))
        run_dir = model_dir.parent if model_dir.name == "final" else model_dir
        digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:8]
        # A run of the jobs API carries its OpenAI-style id (ft:<base>:<org>:<suffix>:<job>,
        # its checkpoints ...:ckpt-step-N); other runs are named here.
        model_id = meta.get("model_id")
        info = ModelInfo(
            id=str(model_id)
            if model_id
            else f"ft:{base_label(base)}:{self.org}:{run_dir.name}:{digest}",
            created=int(run_dir.stat().st_mtime),
            owned_by=self.org,
            parent=self._base_id(base),
            root=self._base_id(base),
            fine_tuned=True,
            task=task,
            path=str(run_dir),
        )
        final = folder.name == "final" and folder.resolve() == model_dir  # given as run/final
        found = folder.parent if final else folder
        lora = (model_dir / "adapter_config.json").is_file()
        if lora and task != "classify" and not _uses_dora(model_dir):
            group = self._group(base)
            return Target(info, group, base, task, model_dir, f"a{digest}", found=found)
        return Target(info, str(model_dir.resolve()), str(model_dir), task, found=found)

    def _base_target(self, model_id: str) -> Target:
        try:
            resolved = resolve_model(model_id)
        except TrimtabError as exc:
            raise _not_found(model_id, str(exc)) from exc
        if resolved.source == "hub" and model_id not in self.preload:
            raise _not_found(model_id)  # hub ids are served only once downloaded (preloaded)
        return Target(self._base_info(model_id), self._group(model_id), model_id, "sft")

    def _base_info(self, name: str) -> ModelInfo:
        path = Path(name)
        created = int(path.stat().st_mtime) if path.is_dir() else self._started
        return ModelInfo(id=name, created=created, owned_by="trimtab", path=None)

    def _base_id(self, base: str) -> str:
        """How a run's base model is named in the listing (its id as a model of its own)."""
        return base

    def _group(self, name: str) -> str:
        """One key per base model, however it is spelled (a folder given two ways is one)."""
        if name in KNOWN_MODELS:
            return name
        path = Path(name).expanduser()
        return str(path.resolve()) if path.exists() else name

    def _known_decoders(self) -> builtins.list[str]:
        names = []
        for spec in KNOWN_MODELS.values():
            if spec.kind != "decoder":
                continue
            try:
                resolve_model(spec.name)
            except TrimtabError:
                continue  # not installed here
            names.append(spec.name)
        return names


def base_label(base: str) -> str:
    """How a base model is written inside an ft: id: its known name, else its folder's name."""
    return base if base in KNOWN_MODELS else Path(base).name


def _servable_folders(run: Path) -> builtins.list[Path]:
    """A run's final model, and the model folders of its checkpoints that carry an id (those
    of the jobs API, ``<model_id>:ckpt-step-N``)."""
    out = [run] if (run / "final" / META).is_file() else []
    for step in sorted((run / "checkpoints").glob("step-*/model")):
        try:
            meta = json.loads((step / META).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("model_id"):
            out.append(step)
    return out


def _remove(found: Path, real: Path | None) -> None:
    """Remove a run: the folder ``real`` (None: keep it) and ``found``, the path the pool
    found it by, when that is a link to it.

    ``real`` is first renamed to a hidden name beside it, which is atomic: from then on no
    scan sees the model (the runs scan skips hidden names, a link to it dangles), so removing
    its files one by one, or failing halfway, never leaves a partial model served.
    """
    trash = None
    if real is not None:
        trash = real.with_name(f".{real.name}.deleting-{secrets.token_hex(4)}")
        try:
            real.rename(trash)
        except OSError as exc:
            raise TrimtabError(f"cannot delete {real}: {exc}") from exc
    if found.is_symlink():
        found.unlink(missing_ok=True)
    if trash is not None:
        try:
            shutil.rmtree(trash)
        except OSError as exc:  # the model is gone already; only its disk space is left
            _log.warning("could not remove all of %s (a deleted model): %s", trash, exc)


def _find_run(runs: dict[str, Target], model_id: str) -> Target | None:
    """The run of an ft: id, or of a run folder's name."""
    if model_id in runs:
        return runs[model_id]
    if model_id.startswith("ft:"):
        return None
    named = [t for t in runs.values() if t.info.path and Path(t.info.path).name == model_id]
    return named[0] if named else None


def _read_config(folder: Path | None) -> dict[str, Any]:
    """A model folder's config.json as a dict ({} if absent or unreadable)."""
    try:
        data = json.loads((folder / "config.json").read_text()) if folder else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _uses_dora(folder: Path) -> bool:
    """DoRA adapters cannot share a mixed batch (PEFT refuses adapter_names with them)."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(isinstance(config, dict) and config.get("use_dora"))


def _not_found(model_id: str, why: str | None = None) -> ModelNotFound:
    message = f"The model '{model_id}' does not exist"
    return ModelNotFound(message + (f" ({why})" if why else ""), param="model")
