"""A fine-tuning file's prepare report (``GET /v1/files/{id}/report``, a trimtab extension).

:func:`trimtab.data.inspection.inspect_file` runs the checks; this module finds the file by
id, the tokenizer by model id (the pool's), and keeps each report: a file never changes once
uploaded, so a report of (file, model) is computed once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from trimtab.data.inspection import Tokenizing, inspect_file
from trimtab.errors import DataError, TrimtabError
from trimtab.jobs.objects import ApiProblem

if TYPE_CHECKING:
    from trimtab.generation.pool import ModelPool
    from trimtab.jobs.service import JobsService

MAX_KEPT = 64  # reports kept in memory (least recently asked for are dropped first)


class FileReports:
    """Reports of the files of ``files``, with the tokenizers of ``pool``'s models."""

    def __init__(self, files: JobsService, pool: ModelPool):
        self.files, self.pool = files, pool
        self._kept: OrderedDict[tuple[str, str | None], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def report(self, file_id: str, model: str | None = None) -> dict[str, Any]:
        """The ``file.report`` of a file, its tokens counted with ``model``'s tokenizer (None:
        whitespace words). A 404 for an unknown file, a 400 naming ``model`` for an unknown
        model."""
        info = self.files.get_file(file_id)
        key = (file_id, model or None)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        tokenizing = self._tokenizing(model) if model else None
        path = self.files.file_path(file_id)
        try:
            found = inspect_file(path, tokenizing)
        except DataError as exc:
            message = str(exc).replace(str(path), info["filename"])
            raise ApiProblem(400, message, param="file_id", code="invalid_file") from None
        made = {"object": "file.report", "file_id": file_id, "filename": info["filename"]} | found
        with self._lock:
            self._kept[key] = made
            while len(self._kept) > MAX_KEPT:
                self._kept.popitem(last=False)
        return made

    def _tokenizing(self, model: str) -> Tokenizing | None:
        """The model's tokenizer; None when the model is known but its tokenizer cannot be
        loaded here (the report then counts words, and says so)."""
        from trimtab.generation.types import EngineError
        from trimtab.models.registry import model_kind

        try:
            target = self.pool.target(model)
        except EngineError:
            raise ApiProblem(
                400,
                f"model: {model!r} is not a model this server knows (see /v1/models)",
                param="model",
                code="model_not_found",
            ) from None
        try:
            tokenizer = self.pool.tokenizer(model)
        except (TrimtabError, OSError, ValueError):
            return None
        try:
            kind = model_kind(target.load_name)
        except TrimtabError:
            kind = None
        context = self.pool.context_length(target)
        return Tokenizing(model, tokenizer, kind, context)


__all__ = ["FileReports"]
