"""The one engine: requests from the server, the CLI and evaluation, batched continuously.

:meth:`Engine.submit` checks a request at once (model, prompt, parameters, constraint, queue
room) in the caller's thread and returns a :class:`Stream`. One engine thread runs a
:class:`~trimtab.generation.lane.Lane` per loaded model and steps them in turn; deltas reach
the stream's reader by a thread-safe queue, and wake an asyncio reader through its loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from trimtab.errors import ConfigError
from trimtab.generation.lane import Job, Lane, RowEnd, context_error
from trimtab.generation.pool import Loaded, ModelPool, Target
from trimtab.generation.types import (
    Choice,
    Delta,
    EngineError,
    QueueFull,
    Request,
    Result,
    TokenLogprob,
)

_log = logging.getLogger(__name__)
_DONE = object()


class Stream:
    """The deltas of one request as the engine makes them; iterate, await, or cancel."""

    def __init__(self, request: Request, prompt_tokens: int):
        self.request, self.prompt_tokens = request, prompt_tokens
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._ends: dict[int, RowEnd] = {}
        self.job: Job | None = None
        self._finished = False

    # the engine side
    def post(self, items: list[Delta | RowEnd] | BaseException | None) -> None:
        self._queue.put(_DONE if items is None else items)
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the reader's event loop is closed: nobody is listening
                pass

    def cancel(self) -> None:
        """Stop generating: the request's rows leave the batch at the engine's next step."""
        if self.job is not None and not self._finished:
            self.job.cancelled = True

    # the reader side
    def __iter__(self) -> Iterator[Delta]:
        while not self._finished:
            yield from self._accept(self._queue.get())

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Delta]:
        if self._loop is None:
            self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        assert self._wake is not None
        while not self._finished:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                self._wake.clear()
                if self._queue.empty():
                    await self._wake.wait()
                continue
            for delta in self._accept(item):
                yield delta

    def _accept(self, item: Any) -> list[Delta]:
        if item is _DONE:
            self._finished = True
            return []
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        deltas = []
        for x in item:
            if isinstance(x, RowEnd):
                self._ends[x.index] = x
            else:
                deltas.append(x)
        return deltas

    def result(self) -> Result:
        """The whole result, once every completion has ended (blocking)."""
        return self._assemble(list(self))

    async def aresult(self) -> Result:
        """The whole result, once every completion has ended."""
        return self._assemble([d async for d in self])

    def _assemble(self, deltas: list[Delta]) -> Result:
        params = self.request.params
        texts: dict[int, list[str]] = {}
        logprobs: dict[int, list[TokenLogprob]] = {}
        finish: dict[int, Any] = {}
        for d in deltas:
            texts.setdefault(d.index, []).append(d.text)
            logprobs.setdefault(d.index, []).extend(d.logprobs)
            if d.finish_reason:
                finish[d.index] = d.finish_reason
        rows = sorted(texts)
        if params.samples > params.n:  # best_of: the n with the best log-probability per token
            rows.sort(key=lambda i: -self._mean_logprob(i))
            rows = rows[: params.n]
        choices = [
            Choice(
                index=k,
                text="".join(texts[i]),
                finish_reason=finish.get(i, "length"),
                logprobs=logprobs[i] if params.logprobs is not None else None,
                completion_tokens=self._ends[i].tokens if i in self._ends else 0,
            )
            for k, i in enumerate(rows)
        ]
        used = sum(e.tokens for e in self._ends.values())
        return Result(self.request.model, choices, self.prompt_tokens, used)

    def _mean_logprob(self, index: int) -> float:
        end = self._ends.get(index)
        return end.logprob_sum / max(end.tokens, 1) if end else float("-inf")


class Engine:
    """Serves requests for every model of a pool from one thread, batching them continuously."""

    def __init__(self, pool: ModelPool, *, max_batch_size: int = 16, max_queue: int = 64):
        if max_batch_size < 1 or max_queue < 1:
            raise ConfigError(["max_batch_size and max_queue: must be at least 1"])
        self.pool, self.max_batch_size, self.max_queue = pool, max_batch_size, max_queue
        self._cond = threading.Condition()
        self._inbox: list[tuple[Job, Target]] = []
        self._lanes: dict[str, Lane] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="trimtab-engine", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> Stream:
        """Check a request and queue it; raises ModelNotFound, QueueFull, EngineError (naming
        the request field at fault) or ConfigError before anything runs."""
        from trimtab.generation.intake import prepare

        target = self.pool.target(request.model)
        tokenizer = self.pool.tokenizer(request.model)
        job = prepare(request, target, tokenizer)
        if not request.clip_to_context and target.task != "classify":
            context = self.pool.context_length(target)
            if context is not None and len(job.ids) + job.params.max_tokens > context:
                raise context_error(context, len(job.ids), job.params.max_tokens)
        stream = Stream(request, len(job.ids))
        job.post, stream.job = stream.post, job
        job.on_end = lambda: self.pool.release(target)
        with self._cond:
            if self._closed:
                raise EngineError("the engine is shutting down")
            if self._waiting() >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already waiting; retry in a moment")
            self._inbox.append((job, target))
            self._cond.notify()
        return stream

    def live_rows(self) -> int:
        """Completions being decoded now, over every model (for tests and /health)."""
        return sum(len(lane.rows) for lane in list(self._lanes.values()))

    def close(self) -> None:
        """Stop the engine thread; requests still running end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _waiting(self) -> int:
        return len(self._inbox) + sum(len(lane.waiting) for lane in self._lanes.values())

    def _run(self) -> None:
        import torch

        while True:
            with self._cond:
                while not self._closed and not self._inbox and not self._busy():
                    self._cond.wait()
                if self._closed:
                    break
                arrived, self._inbox = self._inbox, []
            for job, target in arrived:
                self._route(job, target)
            for lane in list(self._lanes.values()):
                try:
                    with torch.inference_mode():
                        lane.step()
                except Exception as exc:  # a broken batch fails its requests, not the server
                    _log.exception("a decode step failed")
                    lane.fail(EngineError(f"generation failed: {exc}"))
        stopped = EngineError("the server is shutting down")
        for lane in self._lanes.values():
            lane.fail(stopped)
        with self._cond:  # requests that never reached a lane end too: no reader waits forever
            left, self._inbox = self._inbox, []
        for job, _ in left:
            job.post(stopped)

    def _busy(self) -> bool:
        return any(lane.busy for lane in self._lanes.values())

    def _route(self, job: Job, target: Target) -> None:
        """Put a job in its model's lane, loading the model (and adapter) on first use."""
        try:
            loaded = self.pool.acquire(target)
        except Exception as exc:  # a model that cannot load fails this request only
            _log.exception("could not load %s", target.info.id)
            job.post(EngineError(f"could not load {target.info.id}: {exc}", param="model"))
            return
        for group in [g for g, lane in self._lanes.items() if not self.pool.is_loaded(g)]:
            if not self._lanes[group].busy:  # its model left the pool: let it be freed
                del self._lanes[group]
        lane = self._lanes.get(target.group)
        if lane is None or lane.model is not loaded.model:
            lane = self._lanes[target.group] = _lane_for(loaded, self.max_batch_size, lane)
        lane.waiting.append(job)


def _lane_for(loaded: Loaded, max_rows: int, old: Lane | None) -> Lane:
    """A lane on a loaded model; a model re-wrapped by PEFT (its first adapter) takes over the
    old lane's rows, which keep their cache: the wrapped model computes the same base."""
    from trimtab.generation.intake import eos_ids

    config = loaded.model.config
    context = getattr(config.get_text_config(), "max_position_embeddings", None)
    lane = Lane(
        loaded.model,
        loaded.tokenizer,
        eos_ids(loaded.model, loaded.tokenizer),
        max_rows=max_rows,
        context=context if isinstance(context, int) else None,
        labels=loaded.labels if loaded.task == "classify" else None,
    )
    if old is not None:
        lane.waiting, lane.rows, lane.part = old.waiting, old.rows, old.part
    return lane
