"""The ``trimtab`` command: parse arguments, call the library, print. No logic of its own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from trimtab import __version__
from trimtab.errors import TrimtabError

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


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help="check, fix and split data into fine-tuning files",
        description="Read labelled or raw data, run quality checks (offering fixes), split it "
                    "and write train/valid/test JSONL plus report.json. Backslash escapes (\\n, "
                    "\\t) in templates, separator, stop and system are expanded.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=".jsonl .json .csv .tsv .parquet .xlsx .txt, optionally .gz")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--valid-input", dest="valid_inputs", action="append", default=[],
                   metavar="FILE", help="a file used as the validation split as is")
    p.add_argument("--test-input", dest="test_inputs", action="append", default=[],
                   metavar="FILE", help="a file used as the test split as is")
    m = p.add_argument_group("mapping")
    m.add_argument("--prompt-template", help='e.g. "{review_title}\\n\\n{review_body}"')
    m.add_argument("--completion-field", help="column holding the completion (label)")
    m.add_argument("--completion-template", help="completion built from columns")
    m.add_argument("--text-field", help="column of raw text (unsupervised data)")
    f = p.add_argument_group("format")
    f.add_argument("--format", choices=["auto", "prompt-completion", "chat", "text"],
                   default="auto")
    f.add_argument("--system", help="system message for --format chat")
    f.add_argument("--task", default="auto", choices=[
        "auto", "classification", "conditional-generation", "open-ended-generation",
        "language-modeling"])
    f.add_argument("--separator", help="suffix for every prompt (default: \\n\\n###\\n\\n, or "
                                       "another that never occurs in the data)")
    f.add_argument("--stop", help="suffix for every completion of a generation task")
    k = p.add_argument_group("checks and splits")
    k.add_argument("--model", default="smollm2-135m",
                   help="base model whose tokenizer counts tokens ('none' to skip)")
    k.add_argument("--max-length", type=int, default=512)
    k.add_argument("--valid-size", type=float, default=None,
                   help="fraction (<1) or number (default 0.1, or 0 with --valid-input)")
    k.add_argument("--test-size", type=float, default=None,
                   help="fraction (<1) or number (default 0.1, or 0 with --test-input)")
    k.add_argument("--seed", type=int, default=42)
    k.add_argument("--no-stratify", dest="stratify", action="store_false")
    k.add_argument("--balance", choices=["none", "down", "up"], default="none",
                   help="down- or up-sample the training split to equal classes")
    k.add_argument("--sample", type=int, help="keep a random sample of N examples")
    d = p.add_argument_group("decisions")
    d.add_argument("--yes", "-y", action="store_true",
                   help="accept every recommended fix without asking")
    d.add_argument("--fix", action="append", default=[], metavar="ID[,ID]",
                   help="apply these fixes")
    d.add_argument("--skip-fix", action="append", default=[], metavar="ID[,ID]",
                   help="never apply these fixes")
    d.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(run=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from trimtab.data import PrepareOptions, prepare
    from trimtab.data.report import format_check, question, render

    values: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in ("run", "command")}
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trimtab", description="Self-hosted fine-tuning of open language models.")
    parser.add_argument("--version", action="version", version=f"trimtab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except TrimtabError as e:
        print(f"error: {e}".replace("\n", "\n  "), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
