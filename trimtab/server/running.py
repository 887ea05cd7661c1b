"""The engine's streams of one HTTP request: submit them, wait for or merge them, cancel them.

A request's streams hold batch places until they finish or are cancelled, so every path out of
a handler (done, error, client gone, server shutting down) cancels them; cancelling a finished
stream does nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Request as HTTPRequest

from trimtab.generation.types import Delta, Request, Result

if TYPE_CHECKING:
    from trimtab.generation.engine import Engine, Stream

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def in_thread(function: Callable[[], T]) -> T:
    """Run blocking work (loading a model, reading run folders) off the event loop.

    Shielded: a handler cancelled meanwhile still receives what was made (streams to cancel)."""
    with anyio.CancelScope(shield=True):
        made = await anyio.to_thread.run_sync(function)
    return made


async def submit_all(engine: Engine, requests: Sequence[Request]) -> list[Stream]:
    """Submit every request, or none: if one is refused, the ones before are cancelled."""

    def submit() -> list[Stream]:
        streams: list[Stream] = []
        try:
            for request in requests:
                streams.append(engine.submit(request))
        except BaseException:
            cancel_all(streams)
            raise
        return streams

    return await in_thread(submit)


def cancel_all(streams: Sequence[Stream]) -> None:
    for stream in streams:
        stream.cancel()


async def disconnected(request: HTTPRequest) -> None:
    """Return once the client has closed the connection (the body is read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def results(request: HTTPRequest, streams: Sequence[Stream]) -> list[Result]:
    """Every stream's result; raises :class:`ClientGone` if the client leaves first."""

    async def wait_all() -> list[Result]:
        # They all run meanwhile; the order of the awaits is the answer's.
        return [await stream.aresult() for stream in streams]

    return await until_disconnect(request, wait_all)


async def until_disconnect(request: HTTPRequest, work: Callable[[], Awaitable[T]]) -> T:
    """What ``work`` returns or raises, unless the client leaves first: then
    :class:`ClientGone` (and ``work`` is cancelled)."""
    done: list[T] = []
    failure: list[BaseException] = []
    async with anyio.create_task_group() as group:

        async def run() -> None:
            try:
                done.append(await work())
            except Exception as e:  # raised below, not inside the task group's ExceptionGroup
                failure.append(e)
            group.cancel_scope.cancel()

        async def watch() -> None:
            await disconnected(request)
            group.cancel_scope.cancel()

        group.start_soon(run)
        group.start_soon(watch)
    if failure:
        raise failure[0]
    if not done:
        raise ClientGone
    return done[0]


class Opened:
    """A stream whose first delta has arrived (or which ended without one): its problems
    found when the engine admits it (model loading, context length) are known before the
    response's status is sent."""

    def __init__(self, stream: Stream):
        self.stream = stream
        self._deltas = aiter(stream)
        self._first: list[Delta] = []

    async def open(self) -> None:
        try:
            self._first.append(await anext(self._deltas))
        except StopAsyncIteration:
            pass

    async def __aiter__(self) -> AsyncGenerator[Delta, None]:
        while self._first:
            yield self._first.pop(0)
        async for delta in self._deltas:
            yield delta


async def opened(request: HTTPRequest, streams: Sequence[Stream]) -> list[Opened]:
    """The streams once each has its first delta; raises the engine's error if one fails
    first, :class:`ClientGone` if the client leaves first."""
    out = [Opened(s) for s in streams]

    async def open_all() -> list[Opened]:
        async with anyio.create_task_group() as group:
            for o in out:
                group.start_soon(o.open)
        return out

    try:
        return await until_disconnect(request, open_all)
    except BaseExceptionGroup as group:  # one failing stream fails them all: the first says why
        raise group.exceptions[0] from None


_END = object()


async def merge(streams: Sequence[Opened]) -> AsyncGenerator[tuple[int, Delta], None]:
    """The deltas of several streams as they come, each with its stream's position."""
    if len(streams) == 1:
        async for delta in streams[0]:
            yield 0, delta
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, stream: Opened) -> None:
        try:
            async for delta in stream:
                queue.put_nowait((i, delta))
            queue.put_nowait((i, _END))
        except Exception as e:
            queue.put_nowait((i, e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            i, item = await queue.get()
            if item is _END:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
