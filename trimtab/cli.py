"""The ``trimtab`` command: parse arguments, call the library, print. No logic of its own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from trimtab import __version__
from trimtab.errors import PAUSED_EXIT, TrimtabError

INTERRUPTED = 130  # the shell's exit status for a process ended by Ctrl-C (128 + SIGINT)
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(value: str) -> str:
    r"""Turn ``\n``, ``\t``, ``\r`` and ``\\`` typed on a command line into the characters."""
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value) and value[i + 1] in ESCAPES:
            out.append(ESCAPES[value[i + 1]])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _add_prepare_inputs(p: argparse.ArgumentParser) -> None:
    """The positional inputs, the output folder and the ready-made validation/test files."""
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help=".jsonl .json .csv .tsv .parquet .xlsx .txt, optionally .gz",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--valid-input",
        dest="valid_inputs",
        action="append",
        default=[],
        metavar="FILE",
        help="a file used as the validation split as is",
    )
    p.add_argument(
        "--test-input",
        dest="test_inputs",
        action="append",
        default=[],
        metavar="FILE",
        help="a file used as the test split as is",
    )


def _add_prepare_mapping(p: argparse.ArgumentParser) -> None:
    """How columns map to prompt, completion or text."""
    m = p.add_argument_group("mapping")
    m.add_argument("--prompt-template", help='e.g. "{review_title}\\n\\n{review_body}"')
    m.add_argument("--completion-field", help="column holding the completion (label)")
    m.add_argument("--completion-template", help="completion built from columns")
    m.add_argument("--text-field", help="column of raw text (unsupervised data)")


def _add_prepare_format(p: argparse.ArgumentParser) -> None:
    """The output format, task, separator and stop sequence."""
    f = p.add_argument_group("format")
    f.add_argument(
        "--format", choices=["auto", "prompt-completion", "chat", "text"], default="auto"
    )
    f.add_argument("--system", help="system message for --format chat")
    f.add_argument(
        "--task",
        default="auto",
        choices=[
            "auto",
            "classification",
            "conditional-generation",
            "open-ended-generation",
            "language-modeling",
        ],
    )
    f.add_argument(
        "--separator",
        help="suffix for every prompt (default: \\n\\n###\\n\\n, or "
        "another that never occurs in the data)",
    )
    f.add_argument("--stop", help="suffix for every completion of a generation task")


def _add_prepare_checks_and_splits(p: argparse.ArgumentParser) -> None:
    """Token counting, split sizes, seed, stratification, balancing and sampling."""
    k = p.add_argument_group("checks and splits")
    k.add_argument(
        "--model",
        default="smollm2-135m",
        help="base model whose tokenizer counts tokens ('none' to skip)",
    )
    k.add_argument("--max-length", type=int, default=512)
    k.add_argument(
        "--valid-size",
        type=float,
        default=None,
        help="fraction (<1) or number (default 0.1, or 0 with --valid-input)",
    )
    k.add_argument(
        "--test-size",
        type=float,
        default=None,
        help="fraction (<1) or number (default 0.1, or 0 with --test-input)",
    )
    k.add_argument("--seed", type=int, default=42)
    k.add_argument("--no-stratify", dest="stratify", action="store_false")
    k.add_argument(
        "--balance",
        choices=["none", "down", "up"],
        default="none",
        help="down- or up-sample the training split to equal classes",
    )
    k.add_argument("--sample", type=int, help="keep a random sample of N examples")
    k.add_argument(
        "--diversity-embedder",
        choices=["auto", "minilm", "bow"],
        default="auto",
        help="vectors of the diversity check: MiniLM (auto: when installed; topic-level "
        "clusters, 12-25 s of a core) or bag of words (about 1 s, word-level clusters)",
    )
    k.add_argument(
        "--no-plots",
        dest="plots",
        action="store_false",
        help="write no plots/diversity.png (the diversity check's clusters, classes, lengths)",
    )


def _add_prepare_decisions(p: argparse.ArgumentParser) -> None:
    """Which fixes to apply without asking, and whether to overwrite outputs."""
    d = p.add_argument_group("decisions")
    d.add_argument(
        "--yes", "-y", action="store_true", help="accept every recommended fix without asking"
    )
    d.add_argument(
        "--fix", action="append", default=[], metavar="ID[,ID]", help="apply these fixes"
    )
    d.add_argument(
        "--skip-fix", action="append", default=[], metavar="ID[,ID]", help="never apply these fixes"
    )
    d.add_argument("--force", action="store_true", help="overwrite existing outputs")


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="check, fix and split data into fine-tuning files",
        description="Read labelled or raw data, run quality checks (offering fixes), split it "
        "and write train/valid/test JSONL, report.json and plots/diversity.png. Backslash "
        "escapes (\\n, \\t) in templates, separator, stop and system are expanded.",
    )
    _add_prepare_inputs(p)
    _add_prepare_mapping(p)
    _add_prepare_format(p)
    _add_prepare_checks_and_splits(p)
    _add_prepare_decisions(p)
    p.set_defaults(
        handler=_run_prepare,
        interrupted="interrupted: no output is half-written (all are written at once, at the end)",
    )


def _run_prepare(args: argparse.Namespace) -> int:
    from trimtab.data import PrepareOptions, prepare
    from trimtab.data.report import format_check, question, render

    values: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k not in ("handler", "command", "interrupted")
    }
    for key in ("prompt_template", "completion_template", "separator", "stop", "system"):
        if values[key] is not None:
            values[key] = unescape(values[key])
    for key in ("fix", "skip_fix"):
        values[key] = [i.strip() for v in values[key] for i in v.split(",") if i.strip()]
    options = PrepareOptions.parse(values)

    def ask(result) -> bool:
        print(format_check(result))
        try:
            answer = input(question(result)).strip().lower()
        except EOFError:
            answer = ""
        return result.fix.recommended if not answer else answer.startswith("y")

    interactive = sys.stdin.isatty() and not options.yes
    result = prepare(options, ask=ask if interactive else None)
    print(render(result.report, result.checks))
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model (full, freeze or LoRA; sft, lm or classify)",
        description="Train from a YAML config and/or key=value overrides (dotted keys, e.g. "
        "optim.lr=1e-4 method.name=full data.task=classify). Every problem in the "
        "config is reported at once, before any model is loaded.",
    )
    p.add_argument("args", nargs="*", metavar="CONFIG.yaml|key=value")
    p.add_argument(
        "--data",
        metavar="DIR",
        help="a folder written by trimtab prepare: sets data.train and data.valid",
    )
    p.add_argument("--resume", metavar="RUN", help="continue a run from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    # Ctrl-C during the training steps is the trainer's TrainingInterrupted (step, checkpoint,
    # resume command); this is for a Ctrl-C outside them (loading, writing final/).
    p.set_defaults(
        handler=_run_train,
        interrupted="interrupted: nothing is half-written (checkpoints, best/ and final/ appear "
        "whole or not at all)",
    )


def _run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trimtab.errors import ConfigError
    from trimtab.training import load_config, train

    files = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if len(files) > 1:
        raise ConfigError([f"one config file at most, got {', '.join(files)}"])
    base: dict[str, Any] = {}
    if args.data:
        folder = Path(args.data)
        base["data"] = {"train": str(folder / "train.jsonl")}
        if (folder / "valid.jsonl").is_file() and (folder / "valid.jsonl").stat().st_size:
            base["data"]["valid"] = str(folder / "valid.jsonl")
    if args.resume:
        if files or overrides or args.data:
            raise ConfigError(
                ["--resume continues a run with its saved config; give no config file or overrides"]
            )
        result = train(None, resume=Path(args.resume), progress=not args.quiet)
    else:
        config = load_config(Path(files[0]) if files else None, overrides, base)
        result = train(config, progress=not args.quiet)
    print(f"run: {result.run_dir}\nmodel: {result.final}")
    for key, value in result.results.items():
        print(f"  {key}: {value}")
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="base models and fine-tuned models")
    msub = p.add_subparsers(dest="models_command", required=True)
    ls = msub.add_parser("list", help="known base models and fine-tuned runs")
    ls.add_argument("--runs", default="runs", help="folder of training runs (default: runs)")
    ls.set_defaults(handler=_run_models_list, interrupted="interrupted")
    pull = msub.add_parser("pull", help="make a model ready offline (convert/cache once)")
    pull.add_argument("name")
    pull.set_defaults(
        handler=_run_models_pull,
        interrupted="interrupted: the model is not ready yet (the cache holds no half-written "
        "part); run the same command again",
    )


def _run_models_list(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trimtab.models.catalog import list_models

    entries = list_models(Path(args.runs))
    print(f"{'name':<44} {'kind':<8} {'source':<8} {'ready':<6} description")
    for e in entries:
        print(
            f"{e.name:<44} {e.kind:<8} {e.source:<8} {'yes' if e.ready else 'no':<6} "
            f"{e.description}"
        )
    return 0


def _run_models_pull(args: argparse.Namespace) -> int:
    from trimtab.models.catalog import pull

    print(f"{args.name}: ready in {pull(args.name)}")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run's model as standalone weights")
    p.add_argument("run", help="a run folder (or its final/ folder)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--merge",
        action="store_true",
        help="merge LoRA adapters into the base weights (full model)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(
        handler=_run_export,
        interrupted="interrupted: no half-written export (it appears whole or not at all)",
    )


def _run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trimtab.training.export import export

    print(f"wrote {export(Path(args.run), Path(args.out), merge=args.merge, force=args.force)}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate fine-tuned runs and base models on a test file",
        description="Evaluate fine-tuned runs and base models on the same prepared test file "
        "and compare them in one table. A base model is a baseline: zero-shot (an instruction "
        "before the text) and few-shot (--shots solved training examples as well). Every row "
        "reports its cost: prompt tokens and latency per request, requests/s.",
    )
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="a run folder (or its final/), a known model name or a model folder",
    )
    p.add_argument(
        "--data",
        required=True,
        help="a folder written by trimtab prepare (its test.jsonl) or a .jsonl file",
    )
    p.add_argument(
        "--mode",
        choices=["score", "generate", "both"],
        default="score",
        help="classification by label scoring (one pass, no text generated), by "
        "generating and parsing an answer, or both (default: score)",
    )
    p.add_argument(
        "--baselines",
        action="store_true",
        help="also evaluate each run's base model zero-shot and few-shot",
    )
    p.add_argument(
        "--shots",
        type=int,
        default=5,
        help="training examples in the few-shot prompt (0: no few-shot; default 5)",
    )
    p.add_argument(
        "--instruction", help="the baselines' task description; {labels} is replaced by the labels"
    )
    p.add_argument("--limit", type=int, help="evaluate the first N examples only")
    p.add_argument(
        "--baseline-limit",
        type=int,
        help="evaluate base models (zero/few-shot) on the first N examples only",
    )
    _add_eval_output_options(p)
    _add_eval_ensembles_and_cost(p)
    from trimtab.generation.sampling import add_sampling_arguments

    add_sampling_arguments(p)  # its own group (argparse deprecates nested groups)
    p.set_defaults(
        handler=_run_eval,
        interrupted="interrupted: no half-written report (the report folder is written whole, "
        "at the end)",
    )


def _add_eval_output_options(p: argparse.ArgumentParser) -> None:
    """How ``trimtab eval`` runs (batch, length, precision) and where its report goes."""
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--max-length",
        type=int,
        default=512,
        help="tokens per example; longer prompts lose their start",
    )
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument(
        "--out",
        help="write the report folder here (report.html/.md/.json, plots/, predictions/)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing report folder")
    p.add_argument("--shot-seed", type=int, default=0, help="seed of the few-shot examples")


def _add_eval_ensembles_and_cost(p: argparse.ArgumentParser) -> None:
    """``--ensemble`` and ``--latency-sample`` of ``trimtab eval``."""
    p.add_argument(
        "--ensemble",
        action="append",
        default=[],
        metavar="[NAME=]MEMBER[:WEIGHT],MEMBER[:WEIGHT]...",
        help="add a row averaging the members' label distributions (weighted if WEIGHTs are "
        "given), scored like one model; a MEMBER is a MODEL (a run folder; one not listed is "
        "evaluated too) or a row's label such as 'smollm2-135m few-shot (k=5)'; NAME labels "
        "the row (default: ensemble(a+b)). Its cost is the members' added up. Repeatable. "
        "Example: --ensemble runs/minilm-full,runs/mpnet-full:2",
    )
    p.add_argument(
        "--latency-sample",
        type=int,
        default=20,
        metavar="N",
        help="time each row answering its first N examples one at a time, after 2 warm-ups "
        "(the cost's latency per request; 0: skip; default 20)",
    )


def _run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trimtab.evaluation.comparison import EvalOptions, run_eval
    from trimtab.generation.sampling import SamplingParams

    sampling = {
        k: getattr(args, k)
        for k in SamplingParams.model_fields
        if getattr(args, k, None) is not None
    }
    options = EvalOptions.parse(
        models=args.models,
        data=Path(args.data),
        mode=args.mode,
        baselines=args.baselines,
        shots=args.shots,
        instruction=args.instruction,
        limit=args.limit,
        baseline_limit=args.baseline_limit,
        batch_size=args.batch_size,
        max_length=args.max_length,
        precision=args.precision,
        out=Path(args.out) if args.out else None,
        force=args.force,
        seed=args.shot_seed,
        sampling=sampling or None,
        ensembles=args.ensemble,
        latency_sample=args.latency_sample,
    )
    run_eval(options)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trimtab", description="Self-hosted fine-tuning of open language models."
    )
    parser.add_argument("--version", action="version", version=f"trimtab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    _add_train(sub)
    _add_models(sub)
    _add_export(sub)
    _add_eval(sub)
    from trimtab.cli_serving import add_serving_commands

    add_serving_commands(sub)
    from trimtab.cli_jobs import add_jobs_commands

    add_jobs_commands(sub)
    from trimtab.cli_sweep import add_sweep_command

    add_sweep_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `trimtab train a=1 --quiet b=2`: argparse ends a positional list at the first option.
    if extra and args.command == "train" and not any(e.startswith("-") for e in extra):
        args.args += extra
    elif extra and args.command == "sweep" and not any(e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args)
    except TrimtabError as e:
        # an interruption or a pause (TrainingInterrupted, TrainingPaused) is not an error
        label = "" if e.exit_code in (INTERRUPTED, PAUSED_EXIT) else "error: "
        print(f"{label}{e}".replace("\n", "\n  "), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # each command says what is true of its own outputs
        print(args.interrupted, file=sys.stderr)
        return INTERRUPTED
