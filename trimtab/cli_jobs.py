"""The ``trimtab files`` and ``trimtab jobs`` commands: the fine-tuning jobs API from a shell.

With ``--server URL`` they talk to a trimtab server (:class:`~trimtab.jobs.client.HttpJobs`);
without it, to the local store and data folder (:class:`~trimtab.jobs.service.JobsService`),
whose jobs ``trimtab serve`` or ``trimtab jobs work`` run. Both answer with OpenAI's objects;
these commands only parse, call and print them: a short line each, or the JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trimtab.errors import TrimtabError

if TYPE_CHECKING:
    from trimtab.jobs.client import HttpJobs
    from trimtab.jobs.service import JobsService

    Jobs = JobsService | HttpJobs

POLL_SECONDS = 1.0  # events --follow
EVENTS_PAGE = 100


def add_jobs_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``files`` and ``jobs`` to the ``trimtab`` parser."""
    local, anywhere = _where_options()
    _add_files(sub, anywhere)
    _add_jobs(sub, local, anywhere)


def _where_options() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Parent parsers: the local store's options, and those plus --server and --json."""
    local = argparse.ArgumentParser(add_help=False)
    g = local.add_argument_group("local store (without --server)")
    g.add_argument(
        "--home",
        help="data folder of files and jobs (default: $TRIMTAB_HOME, else ~/.cache/trimtab)",
    )
    g.add_argument(
        "--database", metavar="URL", help="SQLite file or postgresql:// URL (default: HOME/jobs.db)"
    )
    g.add_argument(
        "--runs", help="folder jobs train into (default: $TRIMTAB_HOME/runs if set, else ./runs)"
    )
    anywhere = argparse.ArgumentParser(add_help=False, parents=[local])
    s = anywhere.add_argument_group("server")
    s.add_argument("--server", metavar="URL", help="a trimtab server, e.g. http://host:8000")
    s.add_argument("--api-key", help="the server's API key (default: $TRIMTAB_API_KEY)")
    anywhere.add_argument("--json", action="store_true", help="print OpenAI's JSON objects")
    return local, anywhere


# --- files -----------------------------------------------------------------------------------


def _add_files(sub: argparse._SubParsersAction, anywhere: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "files",
        help="upload and manage fine-tuning files (as OpenAI's /v1/files)",
        description="Upload .jsonl training files (checked line by line), list, read back and "
        "delete them: in the local data folder, or on a trimtab server with --server.",
    )
    fsub = p.add_subparsers(dest="files_command", required=True)
    done = "interrupted"
    create = fsub.add_parser("create", parents=[anywhere], help="upload a .jsonl file")
    create.add_argument("path", metavar="PATH")
    create.add_argument("--purpose", default="fine-tune", help="(default: fine-tune)")
    create.set_defaults(
        handler=_files_create, interrupted="interrupted: the upload is not kept (nothing is)"
    )
    ls = fsub.add_parser("list", parents=[anywhere], help="files, newest first")
    ls.add_argument("--purpose", help="only files of this purpose")
    ls.add_argument("--limit", type=int, default=10000)
    ls.add_argument("--order", choices=["asc", "desc"], default="desc")
    ls.add_argument("--after", metavar="FILE_ID", help="the page after this file")
    ls.set_defaults(handler=_files_list, interrupted=done)
    get = fsub.add_parser("get", parents=[anywhere], help="a file's object")
    get.add_argument("file_id", metavar="ID")
    get.set_defaults(handler=_files_get, interrupted=done)
    content = fsub.add_parser("content", parents=[anywhere], help="a file's bytes")
    content.add_argument("file_id", metavar="ID")
    content.add_argument("-o", "--out", metavar="FILE", help="write here (default: stdout)")
    content.set_defaults(handler=_files_content, interrupted=done)
    delete = fsub.add_parser("delete", parents=[anywhere], help="delete a file")
    delete.add_argument("file_id", metavar="ID")
    delete.set_defaults(handler=_files_delete, interrupted=done)


def _files_create(args: argparse.Namespace) -> int:
    with _jobs(args) as jobs:
        _show(args, _upload(jobs, Path(args.path), args.purpose))
    return 0


def _files_list(args: argparse.Namespace) -> int:
    with _jobs(args) as jobs:
        page = jobs.list_files(
            purpose=args.purpose, limit=args.limit, order=args.order, after=args.after
        )
    _show(args, page)
    return 0


def _files_get(args: argparse.Namespace) -> int:
    with _jobs(args) as jobs:
        _show(args, jobs.get_file(args.file_id))
    return 0


def _files_content(args: argparse.Namespace) -> int:
    import shutil

    from trimtab.jobs.client import HttpJobs

    with _jobs(args) as jobs, _output(args.out) as out:
        if isinstance(jobs, HttpJobs):
            jobs.write_content(args.file_id, out)
        else:
            with open(jobs.file_path(args.file_id), "rb") as source:
                shutil.copyfileobj(source, out)
    return 0


def _files_delete(args: argparse.Namespace) -> int:
    with _jobs(args) as jobs:
        _show(args, jobs.delete_file(args.file_id))
    return 0


# --- jobs ------------------------------------------------------------------------------------


def _add_jobs(
    sub: argparse._SubParsersAction,
    local: argparse.ArgumentParser,
    anywhere: argparse.ArgumentParser,
) -> None:
    p = sub.add_parser(
        "jobs",
        help="fine-tuning jobs (as OpenAI's /v1/fine_tuning/jobs)",
        description="Create fine-tuning jobs and follow, pause, resume or cancel them: in the "
        "local store (run by `trimtab serve` or `trimtab jobs work`), or on a trimtab server "
        "with --server.",
    )
    jsub = p.add_subparsers(dest="jobs_command", required=True)
    _add_jobs_create(jsub, anywhere)
    done = "interrupted"
    ls = jsub.add_parser("list", parents=[anywhere], help="jobs, newest first")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--after", metavar="JOB_ID", help="the page after this job")
    ls.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="jobs tagged so"
    )
    ls.set_defaults(handler=_jobs_list, interrupted=done)
    events = jsub.add_parser("events", parents=[anywhere], help="a job's events, oldest first")
    events.add_argument("job_id", metavar="ID")
    events.add_argument("--limit", type=int, default=20, help="the latest N (default: 20)")
    events.add_argument(
        "--follow", action="store_true", help="print events as they come until the job ends"
    )
    events.set_defaults(handler=_jobs_events, interrupted="stopped following (the job goes on)")
    for name, help_text in (
        ("get", "a job's object"),
        ("trials", "a sweep job's trials (each a job), in trial order"),
        ("checkpoints", "a job's checkpoints, newest first"),
        ("cancel", "cancel a job (a running one stops with its whole process group)"),
        ("pause", "pause a running job: it checkpoints and stops"),
        ("resume", "queue a paused job again, from its last checkpoint"),
    ):
        one = jsub.add_parser(name, parents=[anywhere], help=help_text)
        one.add_argument("job_id", metavar="ID")
        one.set_defaults(handler=_jobs_one, interrupted=done)
    work = jsub.add_parser(
        "work",
        parents=[local],
        help="run the local store's jobs here, in the foreground",
        description="A scheduler on the local store: validates, starts and follows jobs (as "
        "`trimtab serve` does), until Ctrl-C or, with --until-idle, until none is left to run.",
    )
    work.add_argument("--until-idle", action="store_true", help="return when no job is left")
    work.add_argument(
        "--concurrency", type=int, default=1, metavar="N", help="jobs trained at once"
    )
    work.set_defaults(
        handler=_jobs_work,
        interrupted="stopped: running jobs go on, and the next `trimtab serve` or `trimtab jobs "
        "work` on this store adopts them",
    )


def _add_jobs_create(jsub: argparse._SubParsersAction, anywhere: argparse.ArgumentParser) -> None:
    c = jsub.add_parser(
        "create",
        parents=[anywhere],
        help="create a fine-tuning job",
        description="Create a job training MODEL on a file (an uploaded file's id, or a .jsonl "
        "path, which is uploaded first). Hyperparameters left out are 'auto'.",
    )
    c.add_argument("--model", required=True, help="a base model name or folder")
    c.add_argument("--training-file", required=True, metavar="FILE_ID|PATH")
    c.add_argument("--validation-file", metavar="FILE_ID|PATH")
    c.add_argument("--suffix", help="up to 64 characters in the fine-tuned model's id")
    c.add_argument("--seed", type=int, metavar="N")
    c.add_argument("--n-epochs", type=int, metavar="N")
    c.add_argument("--batch-size", type=int, metavar="N")
    c.add_argument("--learning-rate-multiplier", type=float, metavar="X")
    c.add_argument("--method", choices=["full", "freeze", "lora"], help="(default: lora)")
    c.add_argument("--task", choices=["sft", "lm", "classify"], help="(default: sft)")
    c.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any `trimtab train` config key, e.g. --set optim.weight_decay=0.1",
    )
    c.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument(
        "--sweep",
        metavar="SPEC.yaml",
        help="a sweep instead of one run: the spec's sweep: section (trials, metric, search, "
        "seed, parallel) and any other config keys (as --set); the job's trials are jobs too",
    )
    c.set_defaults(handler=_jobs_create, interrupted="interrupted: no job was created")


def _jobs_create(args: argparse.Namespace) -> int:
    with _jobs(args) as jobs:
        job = jobs.create_job(_job_body(args, jobs))
    _show(args, job)
    if not args.server:
        _note(
            f"{job['id']} is queued: `trimtab serve` or `trimtab jobs work` on this store runs it"
        )
    return 0


def _job_body(args: argparse.Namespace, jobs: Jobs) -> dict[str, Any]:
    """The request body of ``jobs create``; a path given as a file is uploaded first."""
    body: dict[str, Any] = {
        "model": args.model,
        "training_file": _file_id(jobs, args.training_file),
    }
    if args.validation_file:
        body["validation_file"] = _file_id(jobs, args.validation_file)
    if args.suffix is not None:
        body["suffix"] = args.suffix
    if args.seed is not None:
        body["seed"] = args.seed
    if args.metadata:
        body["metadata"] = _pairs(args.metadata, "--metadata")
    names = ("n_epochs", "batch_size", "learning_rate_multiplier")
    hyper = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if hyper:
        body["method"] = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
    extension: dict[str, Any] = {
        k: getattr(args, k) for k in ("method", "task") if getattr(args, k)
    }
    config: dict[str, Any] = {}
    if args.sweep:
        extension["sweep"], config = _sweep_spec(Path(args.sweep))
    if args.set:
        config |= _pairs(args.set, "--set")
    if config:
        extension["config"] = config
    if extension:
        body["trimtab"] = extension
    return body


def _sweep_spec(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sweep spec file's ``sweep:`` section, and its other keys as dotted config keys."""
    import yaml

    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise TrimtabError(f"{path}: cannot read the sweep spec: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise TrimtabError(f"{path}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("sweep"), dict):
        raise TrimtabError(f"{path}: expected a mapping with a sweep: section (trials, search...)")
    section = spec.pop("sweep")

    def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            name = f"{prefix}{key}"
            out |= flat(value, f"{name}.") if isinstance(value, dict) else {name: value}
        return out

    return section, flat(spec)


def _file_id(jobs: Jobs, value: str) -> str:
    """A file id as given, or the id of the file at that path once uploaded (as ``openai api
    fine_tunes.create -t train.jsonl`` did)."""
    path = Path(value)
    if not path.is_file():
        if value.endswith(".jsonl") or os.sep in value:  # meant as a path, not an id
            raise TrimtabError(f"{value}: no such file")
        return value
    file_id: str = _upload(jobs, path, "fine-tune")["id"]
    _note(f"uploaded {path} as {file_id}")
    return file_id


def _jobs_list(args: argparse.Namespace) -> int:
    metadata = _pairs(args.metadata, "--metadata") or None
    with _jobs(args) as jobs:
        _show(args, jobs.list_jobs(after=args.after, limit=args.limit, metadata=metadata))
    return 0


def _jobs_one(args: argparse.Namespace) -> int:
    """get, checkpoints, cancel, pause, resume: one call on one job."""
    with _jobs(args) as jobs:
        call = {
            "get": jobs.get_job,
            "trials": jobs.list_trials,
            "checkpoints": jobs.list_checkpoints,
            "cancel": jobs.cancel,
            "pause": jobs.pause,
            "resume": jobs.resume,
        }[args.jobs_command]
        _show(args, call(args.job_id))
    return 0


def _jobs_events(args: argparse.Namespace) -> int:
    with _jobs(args) as jobs:
        if args.follow:
            _follow(args, jobs)
            return 0
        page = jobs.list_events(args.job_id, limit=args.limit)
    if args.json:
        _show(args, page)
    else:
        for event in reversed(page["data"]):  # a log reads oldest first
            print(_line(event))
    return 0


def _follow(args: argparse.Namespace, jobs: Jobs) -> None:
    """Print the job's events oldest first as they come, each once, until the job ends; then
    its final status."""
    from trimtab.jobs.service import FINISHED

    seen: set[str] = set()
    while True:
        # The status first: a job's last event is written with its final status, so the
        # events read after a final status include it.
        job = jobs.get_job(args.job_id)
        for event in _new_events(jobs, args.job_id, seen):
            print(json.dumps(event) if args.json else _line(event), flush=True)
        if job["status"] in FINISHED:
            break
        time.sleep(POLL_SECONDS)
    if not args.json:
        print(_final(job))


def _new_events(jobs: Jobs, job_id: str, seen: set[str]) -> list[dict[str, Any]]:
    """The job's events not in ``seen`` (added to it), oldest first: pages back from the
    newest to the first page holding one seen before."""
    fresh: list[dict[str, Any]] = []
    after = None
    while True:
        page = jobs.list_events(job_id, after=after, limit=EVENTS_PAGE)
        fresh += [e for e in page["data"] if e["id"] not in seen]
        if not page["has_more"] or not page["data"] or any(e["id"] in seen for e in page["data"]):
            break
        after = page["data"][-1]["id"]
    seen.update(e["id"] for e in fresh)
    return fresh[::-1]


def _final(job: dict[str, Any]) -> str:
    line = f"{job['id']} {job['status']}"
    if job.get("fine_tuned_model"):
        line += f": {job['fine_tuned_model']}"
    if job.get("error"):
        line += f": {job['error'].get('message')}"
    return line


def _jobs_work(args: argparse.Namespace) -> int:
    from trimtab.jobs.executors import LocalExecutor
    from trimtab.jobs.scheduler import Scheduler

    with _local(args) as service:
        scheduler = Scheduler(service, LocalExecutor(), concurrency=args.concurrency)
        if args.until_idle:
            scheduler.run_until_idle()
            print("idle: no job is waiting or running")
            return 0
        print(f"working on the jobs of {service.store.url} (Ctrl-C to stop)", flush=True)
        scheduler.start()
        try:
            while True:
                time.sleep(3600)
        finally:
            scheduler.stop()


# --- shared ----------------------------------------------------------------------------------


@contextmanager
def _jobs(args: argparse.Namespace) -> Iterator[Jobs]:
    """The server's API with --server, else the local store's service (closed after)."""
    if args.server:
        from trimtab.jobs.client import HttpJobs

        yield HttpJobs(args.server, api_key=args.api_key or os.environ.get("TRIMTAB_API_KEY"))
        return
    with _local(args) as service:
        yield service


@contextmanager
def _local(args: argparse.Namespace) -> Iterator[JobsService]:
    """The service of the local store (--home, --database, --runs), closed after."""
    from trimtab.cli_serving import home_folder, runs_folder
    from trimtab.jobs.service import JobsService
    from trimtab.jobs.store import Store

    home = home_folder(args)
    store = Store(args.database or home / "jobs.db")
    try:
        # Absolute: the job records its run folder, and `trimtab serve` may start elsewhere.
        yield JobsService(store, home, runs_folder(args).absolute())
    finally:
        store.close()


def _upload(jobs: Jobs, path: Path, purpose: str) -> dict[str, Any]:
    if not path.is_file():
        raise TrimtabError(f"{path}: no such file")
    with open(path, "rb") as source:
        return jobs.upload(path.name, source, purpose)


@contextmanager
def _output(path: str | None) -> Iterator[Any]:
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    # Written beside and moved into place: an interrupted download leaves no partial file.
    target = Path(path)
    part = target.with_name(f".{target.name}.part")
    try:
        with open(part, "wb") as out:
            yield out
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


def _pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise TrimtabError(f"{flag}: expected KEY=VALUE, got {value!r}")
        pairs[key] = rest
    return pairs


def _note(text: str) -> None:
    # Notes go to stderr: stdout holds only the objects (one per line, or JSON with --json).
    print(text, file=sys.stderr)


def _show(args: argparse.Namespace, obj: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(obj, indent=2))
        return
    if obj.get("object") != "list":
        print(_line(obj))
        return
    for item in obj["data"]:
        print(_line(item))
    if obj.get("has_more"):
        _note(f"more: --after {obj['data'][-1]['id']}")


def _line(obj: dict[str, Any]) -> str:
    """One object as a short line."""
    kind, ident = obj.get("object"), obj.get("id")
    if obj.get("deleted"):
        return f"{ident} deleted"
    if kind == "file":
        return (
            f"{ident}  {obj['filename']}  {obj['bytes']} bytes  {obj['purpose']}  "
            f"{obj['status']}  {_when(obj['created_at'])}"
        )
    if kind == "fine_tuning.job" and (obj.get("trimtab") or {}).get("parent_id"):
        ext = obj["trimtab"]
        value = ext.get("value")
        params = ", ".join(f"{k}={v}" for k, v in (ext.get("params") or {}).items())
        shown = f"{ext.get('metric')} {value:.6g}" if isinstance(value, float) else "—"
        return f"trial {ext.get('sweep_trial')}  {ident}  {obj['status']}  {shown}  {params}"
    if kind == "fine_tuning.job":
        parts = [ident, obj["status"], obj["model"], obj["training_file"]]
        parts += [obj["fine_tuned_model"]] if obj.get("fine_tuned_model") else []
        parts += [f"error: {obj['error'].get('message')}"] if obj.get("error") else []
        return "  ".join(str(p) for p in parts)
    if kind == "fine_tuning.job.event":
        return f"{_when(obj['created_at'])}  {obj['level']:<5}  {obj['message']}"
    if kind == "fine_tuning.job.checkpoint":
        numbers = {k: v for k, v in obj["metrics"].items() if isinstance(v, int | float)}
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in numbers.items())
        return (
            f"{ident}  step {obj['step_number']}  {obj['fine_tuned_model_checkpoint']}  {metrics}"
        )
    return json.dumps(obj)


def _when(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
