"""The ``trimtab`` commands that run models: ``serve``, ``complete`` and ``chat``.

Like the rest of the CLI they only parse, call the engine (:mod:`trimtab.generation`) or the
server (:mod:`trimtab.server`) and print.
"""

from __future__ import annotations

import argparse
from typing import Any

from trimtab.cli import unescape


def add_serving_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``serve``, ``complete`` and ``chat`` to the ``trimtab`` parser."""
    _add_serve(sub)
    _add_complete(sub)
    _add_chat(sub)


def _add_serving_options(p: argparse.ArgumentParser) -> None:
    """Where models come from and how they run: shared by serve, complete and chat."""
    p.add_argument(
        "--runs",
        help="folder of fine-tuned runs (default: $TRIMTAB_HOME/runs if set, else ./runs)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="fp32",
        help="fp32 weights (the default: greedy text is the same alone or batched), bf16 "
        "(2-3x the tokens/s on AVX512-BF16/AMX CPUs, but batched greedy text can differ), or "
        "auto (bf16 where it is fast)",
    )
    p.add_argument("--max-batch-size", type=int, default=16, help="completions decoded together")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="an OpenAI-compatible server for base models and fine-tuned runs",
        description="Serve /v1/completions, /v1/chat/completions and /v1/models for every base "
        "model ready here and every fine-tuned run (ft:<base>:<org>:<run>:<hash>). LoRA runs "
        "on one base share its weights and its batches.",
    )
    p.add_argument(
        "preload",
        nargs="*",
        metavar="MODEL",
        help="models to list and serve besides the known ones (e.g. a local model folder)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (or $TRIMTAB_API_KEY)")
    p.add_argument("--org", default="trimtab", help="the organisation in ft: model ids")
    p.add_argument("--max-adapters", type=int, default=8, help="LoRA adapters kept loaded")
    p.add_argument(
        "--max-models", type=int, default=4, help="models kept loaded (bases, full fine-tunes)"
    )
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _add_serving_options(p)
    _add_jobs_options(p)
    p.set_defaults(handler=_run_serve, interrupted="server stopped")


def _add_jobs_options(p: argparse.ArgumentParser) -> None:
    """Where the fine-tuning jobs API keeps its files and jobs, and what runs the jobs."""
    j = p.add_argument_group("fine-tuning jobs (/v1/files, /v1/fine_tuning/jobs)")
    j.add_argument(
        "--home",
        help="data folder of uploaded files and jobs (default: $TRIMTAB_HOME, else "
        "~/.cache/trimtab)",
    )
    j.add_argument(
        "--database",
        metavar="URL",
        help="the jobs store: a SQLite file or postgresql://user:password@host/db for several "
        "servers (default: HOME/jobs.db)",
    )
    j.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="where jobs train: a process here (local) or a Ray cluster (ray)",
    )
    j.add_argument("--ray-address", metavar="URL", help="the Ray dashboard (or $RAY_ADDRESS)")
    j.add_argument(
        "--jobs-concurrency", type=int, default=1, metavar="N", help="jobs trained at once"
    )
    j.add_argument(
        "--max-file-bytes",
        type=int,
        metavar="N",
        help="largest file accepted for upload, in bytes (default: 512 MiB)",
    )


def runs_folder(args: argparse.Namespace) -> Any:
    """The runs folder of ``--runs``: else $TRIMTAB_HOME/runs if set, else ./runs."""
    import os
    from pathlib import Path

    if args.runs:
        return Path(args.runs)
    home = os.environ.get("TRIMTAB_HOME")
    return Path(home) / "runs" if home else Path("runs")


def home_folder(args: argparse.Namespace) -> Any:
    """The data folder of ``--home``: else trimtab's cache folder."""
    from pathlib import Path

    from trimtab.models.registry import cache_dir

    return Path(args.home).expanduser().absolute() if args.home else cache_dir()


def _run_serve(args: argparse.Namespace) -> int:
    import os

    from trimtab.jobs.service import DEFAULT_MAX_FILE_BYTES
    from trimtab.server.app import serve

    runs, home = runs_folder(args), home_folder(args)
    database = args.database or str(home / "jobs.db")
    max_file_bytes = args.max_file_bytes or DEFAULT_MAX_FILE_BYTES
    print(_startup_line(args, runs, home, database, max_file_bytes), flush=True)
    serve(
        args.host,
        args.port,
        runs_dir=runs,
        api_key=args.api_key or os.environ.get("TRIMTAB_API_KEY") or None,
        org=args.org,
        max_adapters=args.max_adapters,
        max_models=args.max_models,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        preload=args.preload,
        log_level=args.log_level,
        dtype=args.precision,
        home=home,
        database=database,
        executor=args.executor,
        ray_address=args.ray_address,
        jobs_concurrency=args.jobs_concurrency,
        max_file_bytes=max_file_bytes,
    )
    return 0


def _startup_line(
    args: argparse.Namespace, runs: Any, home: Any, database: str, max_file_bytes: int
) -> str:
    import os

    executor = args.executor
    if executor == "ray":
        executor += f" at {args.ray_address or os.environ.get('RAY_ADDRESS') or '?'}"
    return (
        f"trimtab serve on http://{args.host}:{args.port}/v1: runs {runs}; jobs store "
        f"{_masked(database)}, files in {home / 'files'} (up to {max_file_bytes} bytes), "
        f"{args.jobs_concurrency} job(s) at a time on the {executor} executor"
    )


def _masked(database: str) -> str:
    # A postgresql:// URL may hold a password: never print it.
    from urllib.parse import urlsplit

    parts = urlsplit(database)
    if parts.password is None:
        return database
    return database.replace(f":{parts.password}@", ":***@", 1)


def _add_generating(sub: argparse._SubParsersAction, name: str, **texts: str) -> Any:
    """A command that runs a model on the engine: MODEL, where models come from, sampling."""
    from trimtab.generation.sampling import add_sampling_arguments

    p = sub.add_parser(name, help=texts["help"], description=texts["description"])
    p.add_argument("model", metavar="MODEL", help="a model id, run folder name or ft: id")
    _add_serving_options(p)
    add_sampling_arguments(p)
    return p


def _add_complete(sub: argparse._SubParsersAction) -> None:
    p = _add_generating(
        sub,
        "complete",
        help="complete a prompt with a model, streamed to the terminal",
        description="Complete PROMPT (\\n, \\t are read as newline, tab) with a base model or "
        "a fine-tuned run, with OpenAI's sampling options.",
    )
    p.add_argument("prompt", metavar="PROMPT")
    p.set_defaults(handler=_run_complete, interrupted="\ninterrupted")


def _add_chat(sub: argparse._SubParsersAction) -> None:
    p = _add_generating(
        sub,
        "chat",
        help="chat with a model in the terminal (/exit to leave)",
        description="An interactive chat through the model's chat template; the history is "
        "sent with every turn. /exit (or Ctrl-D) leaves, /reset forgets the history.",
    )
    p.add_argument("--system", help="a system message that starts the conversation")
    p.set_defaults(handler=_run_chat, interrupted="\nbye")


def _engine(args: argparse.Namespace) -> Any:
    from trimtab.generation.engine import Engine
    from trimtab.generation.pool import ModelPool

    pool = ModelPool(runs_folder(args), dtype=args.precision, any_folder=True)
    return Engine(pool, max_batch_size=args.max_batch_size)


def _run_complete(args: argparse.Namespace) -> int:
    from trimtab.generation.sampling import sampling_from_args
    from trimtab.generation.types import Request

    params = sampling_from_args(args)
    engine = _engine(args)
    try:
        stream = engine.submit(Request(args.model, unescape(args.prompt), params))
        if params.n == 1:
            for delta in stream:
                print(delta.text, end="", flush=True)
            print()
        else:
            for choice in stream.result().choices:
                print(f"--- completion {choice.index + 1} ({choice.finish_reason})")
                print(choice.text)
    finally:
        engine.close()
    return 0


def _run_chat(args: argparse.Namespace) -> int:
    from trimtab.generation.sampling import sampling_from_args
    from trimtab.generation.types import Request

    params = sampling_from_args(args).model_copy(update={"n": 1})
    engine = _engine(args)
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    try:
        while True:
            try:
                line = input("> ")
            except EOFError:
                break
            if line.strip() == "/exit":
                break
            if line.strip() == "/reset":
                history = list(start)
                continue
            history.append({"role": "user", "content": line})
            prompt = engine.pool.render_chat(args.model, history)
            request = Request(args.model, prompt, params, add_special_tokens=False)
            reply = ""
            for delta in engine.submit(request):
                reply += delta.text
                print(delta.text, end="", flush=True)
            print()
            history.append({"role": "assistant", "content": reply})
    finally:
        engine.close()
    return 0
