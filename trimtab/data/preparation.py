"""``trimtab prepare``: from raw labelled data to checked, split fine-tuning files.

The stage reads every input, maps records to examples, runs the checks in order (each fix decided
by a flag, a question in a terminal, or its recommended default), counts tokens with the base
model's tokenizer, splits, and writes ``train.jsonl``, ``valid.jsonl``, ``test.jsonl``,
``report.json`` and the diversity check's figure ``plots/diversity.png`` (unless ``--no-plots``)
all at once. The report holds the exact command that reproduces the run, decisions included; the
same inputs, options and seed give byte-identical files.
"""

from __future__ import annotations

import gc
import json
import random
import shlex
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trimtab import __version__
from trimtab.data import affixes as af
from trimtab.data import checks as c
from trimtab.data import diversity as dv
from trimtab.data import splits as sp
from trimtab.data import tokens as tk
from trimtab.data.diversity_plot import plot_diversity
from trimtab.data.examples import Example, Mapping, build_examples, infer_mode, template_fields
from trimtab.data.readers import detect_format, read_file
from trimtab.data.writers import OUTPUT_FILES, _carry_over, check_output_dir, jsonl, to_record
from trimtab.errors import ConfigError, DataError, Problem, TrimtabError
from trimtab.files import staged_dir

FIX_IDS = (
    "drop-invalid-utf8",
    "strip-control-characters",
    "drop-empty",
    "drop-duplicates",
    "drop-near-duplicates",
    "drop-contradictions",
    "lowercase",
    "remove-prompt-prefix",
    "add-separator",
    "remove-completion-prefix",
    "add-stop",
    "add-leading-space",
    "drop-long",
    "drop-leaking",
)

Ask = Callable[[c.CheckResult], bool]

# Every file a run may write: a plot this run does not make is removed with the rest, since an
# older run's figure would not match the new report.
OUTPUTS = (*OUTPUT_FILES, dv.PLOT)


class PrepareOptions(BaseModel):
    """Every option of ``trimtab prepare``; the CLI flags map one to one onto these fields."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Path] = Field(min_length=1)
    out: Path
    valid_inputs: list[Path] = []
    test_inputs: list[Path] = []
    prompt_template: str | None = None
    completion_field: str | None = None
    completion_template: str | None = None
    text_field: str | None = None
    format: Literal["auto", "prompt-completion", "chat", "text"] = "auto"
    system: str | None = None
    task: Literal[
        "auto",
        "classification",
        "conditional-generation",
        "open-ended-generation",
        "language-modeling",
    ] = "auto"
    separator: str | None = None
    stop: str | None = None
    model: str = "smollm2-135m"
    max_length: int = Field(512, gt=0)
    valid_size: float | None = Field(None, ge=0)
    test_size: float | None = Field(None, ge=0)
    seed: int = 42
    stratify: bool = True
    balance: Literal["none", "down", "up"] = "none"
    sample: int | None = Field(None, gt=0)
    yes: bool = False
    fix: list[str] = []
    skip_fix: list[str] = []
    force: bool = False
    plots: bool = True
    # The diversity check's vectors: MiniLM ("auto": when installed, else bag of words) or bag
    # of words, about 1 s of CPU for the check's 1,000-example sample where MiniLM takes 12-25.
    diversity_embedder: dv.Embedder = "auto"

    @classmethod
    def parse(cls, values: dict[str, Any]) -> PrepareOptions:
        """Build and validate, reporting every problem at once as a ConfigError."""
        try:
            options = cls.model_validate(values)
        except ValidationError as e:
            raise ConfigError(
                [
                    f"{'.'.join(str(p) for p in err['loc']) or 'options'}: {err['msg']}"
                    for err in e.errors()
                ]
            ) from None
        problems = options.problems()
        if problems:
            raise ConfigError(problems)
        return options

    @property
    def resolved_valid_size(self) -> float:
        """0.1 of the data, or none of it when a validation file is given."""
        return self.valid_size if self.valid_size is not None else (0 if self.valid_inputs else 0.1)

    @property
    def resolved_test_size(self) -> float:
        """0.1 of the data, or none of it when a test file is given."""
        return self.test_size if self.test_size is not None else (0 if self.test_inputs else 0.1)

    def problems(self) -> list[str]:
        """Every inconsistency between options (types are already checked by pydantic)."""
        out: list[str] = []
        if self.completion_field is not None and self.completion_template is not None:
            out.append("give --completion-field or --completion-template, not both")
        if self.text_field is not None and any(
            v is not None
            for v in (self.prompt_template, self.completion_field, self.completion_template)
        ):
            out.append("--text-field (raw text) cannot be combined with prompt/completion options")
        for name in ("prompt_template", "completion_template"):
            template = getattr(self, name)
            if template is not None:
                try:
                    if not template_fields(template):
                        out.append(
                            f"--{name.replace('_', '-')} {template!r} names no column; "
                            "use {column} placeholders"
                        )
                except ValueError as e:
                    out.append(f"--{name.replace('_', '-')}: {e}")
        for name, size in (("valid-size", self.valid_size), ("test-size", self.test_size)):
            if size is not None and size >= 1 and not float(size).is_integer():
                out.append(f"--{name} {size}: use a fraction below 1 or a whole number of examples")
        sizes = [s for s in (self.resolved_valid_size, self.resolved_test_size) if s < 1]
        if sum(sizes) >= 1:
            out.append("--valid-size and --test-size fractions leave nothing for training")
        for flag, ids in (("--fix", self.fix), ("--skip-fix", self.skip_fix)):
            unknown = [i for i in ids if i not in FIX_IDS]
            if unknown:
                out.append(f"{flag}: unknown fix {', '.join(unknown)}; known: {', '.join(FIX_IDS)}")
        both = sorted(set(self.fix) & set(self.skip_fix))
        if both:
            out.append(f"{', '.join(both)} given to both --fix and --skip-fix")
        if self.system is not None and self.format != "chat":
            out.append("--system only applies to --format chat")
        if self.separator == "":
            out.append("--separator must not be empty")
        for path in self.inputs + self.valid_inputs + self.test_inputs:
            try:
                detect_format(path)
            except DataError as e:
                out.append(str(e))
        return out


@dataclass
class PrepareResult:
    """What a prepare run did: the report as written, and where."""

    report: dict[str, Any]
    checks: list[c.CheckResult]
    out: Path


def prepare(options: PrepareOptions, ask: Ask | None = None) -> PrepareResult:
    """Run the whole stage; ``ask`` (a terminal question) decides fixes no flag decides."""
    with _no_cycle_collection():
        return _prepare(options, ask)


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Python's cycle collector off for the stage: it would walk the stage's hundreds of
    thousands of records, examples and keys again and again (0.7 s of a 10 s run on 200,000
    rows), and the stage makes next to no reference cycles (those it does, such as a figure's,
    are collected afterwards). Reference counting frees everything else as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _prepare(options: PrepareOptions, ask: Ask | None) -> PrepareResult:
    check_output_dir(options.out, options.force, OUTPUTS)
    plots = options.out / Path(dv.PLOT).parent
    if options.plots and plots.exists() and not plots.is_dir():
        raise TrimtabError(f"{plots}: exists and is not a folder; move it or use --no-plots")
    from trimtab.models.registry import model_kind

    tokenizer_name = None if options.model == "none" else options.model
    # an unknown name fails before the data is read
    kind = model_kind(tokenizer_name) if tokenizer_name else None
    mapping = Mapping(
        options.prompt_template,
        options.completion_field,
        options.completion_template,
        options.text_field,
    )
    examples, inputs, unused, mode = _read_all(options, mapping)
    fmt = _output_format(options, mode)
    state = c.State(
        examples,
        mode,
        fmt,
        requested_separator=options.separator,
        requested_stop=options.stop,
        system=options.system,
        model=tokenizer_name,
        model_kind=kind,
        unused_fields=unused,
    )
    checks = Checks(state, options, ask, background=True)
    try:
        check_content(checks, None if options.task == "auto" else options.task)
        _check_tokens(checks, _load_tokenizer(tokenizer_name, chat=fmt == "chat"))
        splits, balance = _split(checks)
        files = {
            f"{name}.jsonl": jsonl(
                [to_record(ex, mode, fmt, options.system) for ex in splits[name]]
            )
            for name in sp.SPLITS
        }
        checks.finish()  # the diversity check, finished meanwhile by its worker
    finally:
        checks.close()
    images = _plots(checks.results, options)
    report = _report(options, state, inputs, len(examples), checks.results, balance)
    files["report.json"] = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    write_outputs(options.out, files, images, options.force)
    return PrepareResult(report, checks.results, options.out)


def _plots(results: list[c.CheckResult], options: PrepareOptions) -> dict[str, bytes]:
    """The diversity check's figure (unless --no-plots), named in its details for the report."""
    diversity = next((r for r in results if r.id == "diversity"), None)
    if not options.plots or diversity is None:
        return {}
    png = diversity.png if isinstance(diversity, dv.DiversityResult) else None
    if png is None:  # not drawn in the background
        png = plot_diversity(diversity, options.seed)
    if png is None:  # too few examples to draw
        return {}
    diversity.details["plot"] = dv.PLOT
    return {dv.PLOT: png}


def write_outputs(out: Path, texts: dict[str, str], images: dict[str, bytes], force: bool) -> None:
    """Write every output or none, as :func:`trimtab.data.writers.write_atomically` does (the
    whole folder staged beside ``out`` and swapped in, other files carried over), with images
    under sub-folders too. An output of :data:`OUTPUTS` this run does not write is removed.
    """
    check_output_dir(out, force, OUTPUTS)
    with staged_dir(out) as staging:
        if out.is_dir():
            _carry_over(out, staging, skip=set(texts))
        for name in OUTPUTS:
            if name not in texts and (staging / name).parent.is_dir():
                # A carried-over file is a hard link to the old one: unlink, never write into it.
                (staging / name).unlink(missing_ok=True)
                if name not in images and (staging / name).parent != staging:
                    _remove_if_empty((staging / name).parent)
        for name, content in texts.items():
            with open(staging / name, "w", encoding="utf-8", newline="\n") as f:
                f.write(content)
        for name, data in images.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` when nothing is left in it (the plots/ of a stale figure)."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


class Checks:
    """Runs checks in order: an error stops the stage (naming file and line); a fix offered
    is decided (flag, question or default) and applied before the next check runs.

    With ``background``, the diversity check (vectors, clusters, figure) runs in a worker
    process while the later checks run; :meth:`finish` waits for it, :meth:`close` stops it.
    """

    def __init__(
        self, state: c.State, options: PrepareOptions, ask: Ask | None, background: bool = False
    ):
        self.state, self.options, self.ask = state, options, ask
        self.background = background
        self.results: list[c.CheckResult] = []
        self.pending: list[dv.PendingDiversity] = []

    def run(self, result: c.CheckResult | None) -> None:
        if result is None:
            return
        if result.status == "error":
            where = [w.rpartition(":") for w in result.locations]
            raise DataError(
                [Problem(f"{result.title}: {result.message}")]
                + [Problem("found here", file=file, line=int(line)) for file, _, line in where]
            )
        if result.fix is not None:
            result.applied, result.decided_by = _decide(result, self.options, self.ask)
            if result.applied:
                result.fix.apply(self.state)
        self.results.append(result)

    def diversity(self, state: c.State) -> c.CheckResult:
        """The diversity check (it offers no fix), or in the background its placeholder."""
        options = self.options
        if not self.background:
            return dv.check_diversity(state, options.diversity_embedder)
        plot_seed = options.seed if options.plots else None
        self.pending.append(
            dv.PendingDiversity(state, options.diversity_embedder, plot_seed=plot_seed)
        )
        return self.pending[-1].placeholder

    def finish(self) -> None:
        """Fill in every check still measured in the background."""
        while self.pending:
            self.pending.pop(0).result()

    def close(self) -> None:
        """Stop background work no longer needed (the stage failed or was interrupted)."""
        while self.pending:
            self.pending.pop().cancel()

    def require_examples(self) -> None:
        if not self.state.examples:
            raise DataError(Problem("no examples left after the fixes; nothing to write"))


def check_content(checks: Checks, task: c.Task | None) -> None:
    """Cleaning, the task type, repeats and the format conventions (separator, spaces)."""
    state = checks.state
    for cleaning in (
        c.check_quantity,
        c.check_extra_fields,
        c.check_invalid_utf8,
        c.check_control_characters,
        c.check_empty_fields,
    ):
        checks.run(cleaning(state))
    checks.require_examples()
    checks.run(c.check_task_type(state, task))
    later: tuple[Callable[[c.State], c.CheckResult | None], ...] = (
        c.check_duplicates,
        c.check_near_duplicates,
        checks.diversity,
        c.check_contradictions,
        c.check_uppercase,
        af.check_prompt_prefix,
        af.check_model_conventions,
        af.check_prompt_suffix,
        af.check_completion_prefix,
        af.check_completion_suffix,
        af.check_leading_space,
    )
    for check in later:
        checks.run(check(state))


def _check_tokens(checks: Checks, tokenizer: Any) -> None:
    """Token lengths with the model's tokenizer (if any), labels' tokens, class balance."""
    state, options = checks.state, checks.options
    counts = tk.measure(state, tokenizer, options.max_length) if tokenizer is not None else None
    checks.run(tk.check_token_lengths(options.model, options.max_length, counts))
    checks.run(tk.check_long_examples(state, options.max_length, counts))
    checks.run(tk.check_multi_token_labels(state, tokenizer, options.model))
    checks.run(sp.check_class_balance(state))
    checks.require_examples()


def _split(
    checks: Checks,
) -> tuple[dict[str, list[Example]], dict[str, dict[str, int]] | None]:
    """Train/valid/test splits, leakage across them, balancing of train (which replaces the
    train split in the state); the final splits and the balance taken."""
    state, options = checks.state, checks.options
    state.splits = sp.split_examples(
        state,
        options.resolved_valid_size,
        options.resolved_test_size,
        options.seed,
        options.stratify,
    )
    checks.run(sp.check_leakage(state))
    balance = sp.balance_train(state, options.balance, options.seed)
    checks.run(sp.check_class_quantity(state))
    assert state.splits is not None
    return state.splits, balance


def _read_all(
    options: PrepareOptions, mapping: Mapping
) -> tuple[list[Example], list[dict[str, Any]], list[str], Any]:
    examples: list[Example] = []
    inputs: list[dict[str, Any]] = []
    unused: set[str] = set()
    mode = None
    sources = (
        [(p, None) for p in options.inputs]
        + [(p, "valid") for p in options.valid_inputs]
        + [(p, "test") for p in options.test_inputs]
    )
    for path, split in sources:
        records, digest = read_file(path)
        file_mode = infer_mode(mapping, records)
        if mode is None:
            mode = file_mode
        elif file_mode != mode:
            raise DataError(
                Problem(
                    f"holds {file_mode} data but earlier inputs hold {mode} data", file=str(path)
                )
            )
        got, extra = build_examples(records, mapping, file_mode, split)
        examples.extend(got)
        unused.update(extra)
        inputs.append(
            {
                "path": str(path),
                "split": split or "auto",
                "format": detect_format(path)[0],
                "records": len(records),
                "sha256": digest,
            }
        )
    if options.sample:
        main = [ex for ex in examples if ex.split is None]
        if options.sample < len(main):
            keep = {id(ex) for ex in random.Random(options.seed).sample(main, options.sample)}
            examples = [ex for ex in examples if ex.split is not None or id(ex) in keep]
    return examples, inputs, sorted(unused), mode


def _output_format(options: PrepareOptions, mode: str) -> c.OutputFormat:
    if options.format == "auto":
        formats: dict[str, c.OutputFormat] = {
            "supervised": "prompt-completion",
            "chat": "chat",
            "text": "text",
        }
        return formats[mode]
    allowed = {
        "supervised": ("prompt-completion", "chat", "text"),
        "chat": ("chat",),
        "text": ("text",),
    }[mode]
    if options.format not in allowed:
        raise ConfigError(
            [
                f"--format {options.format} cannot be made from {mode} data; "
                f"possible: {', '.join(allowed)}"
            ]
        )
    return options.format


def _load_tokenizer(name: str | None, chat: bool) -> Any:
    """Chat needs the model's chat template (transformers); counting alone, the Rust tokenizer."""
    if name is None:
        return None
    from trimtab.models import load_fast_tokenizer, load_tokenizer

    return load_tokenizer(name) if chat else load_fast_tokenizer(name)


def _decide(result: c.CheckResult, options: PrepareOptions, ask: Ask | None) -> tuple[bool, str]:
    assert result.fix is not None
    if result.fix.id in options.skip_fix:
        return False, "--skip-fix"
    if result.fix.id in options.fix:
        return True, "--fix"
    if options.yes:
        return result.fix.recommended, "--yes"
    if ask is not None:
        return ask(result), "asked"
    return result.fix.recommended, "default"


def reproduce_command(options: PrepareOptions, results: list[c.CheckResult]) -> str:
    """The command line that redoes this run without questions, every decision spelt out.

    ``--force`` is left out: it changes what may be overwritten, not what is written.
    """
    defaults = PrepareOptions.model_validate({"inputs": options.inputs, "out": options.out})
    args = ["trimtab", "prepare", *map(str, options.inputs), "--out", str(options.out)]
    for name in PrepareOptions.model_fields:
        if name in ("inputs", "out", "yes", "fix", "skip_fix", "force"):
            continue
        value = getattr(options, name)
        if value == getattr(defaults, name):
            continue
        flag = "--" + name.replace("_", "-").replace("-inputs", "-input")
        if isinstance(value, list):
            for item in value:
                args += [flag, str(item)]
        elif isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, float):
            args += [flag, f"{value:g}"]
        else:
            args += [flag, _escape(str(value))]
    offered = [r for r in results if r.fix is not None]
    applied = [r.fix.id for r in offered if r.applied]  # type: ignore[union-attr]
    skipped = [r.fix.id for r in offered if not r.applied]  # type: ignore[union-attr]
    if applied:
        args += ["--fix", ",".join(applied)]
    if skipped:
        args += ["--skip-fix", ",".join(skipped)]
    return shlex.join(args)


def _escape(value: str) -> str:
    return (
        value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    )


def _report(
    options: PrepareOptions,
    state: c.State,
    inputs: list[dict[str, Any]],
    read: int,
    results: list[c.CheckResult],
    balance: dict[str, Any] | None,
) -> dict[str, Any]:
    assert state.splits is not None
    splits: dict[str, Any] = {}
    for name, items in state.splits.items():
        entry: dict[str, Any] = {"examples": len(items)}
        if state.task == "classification":
            entry["labels"] = dict(sorted(Counter(state.label_of(ex) for ex in items).items()))
        splits[name] = entry
    return {
        "trimtab_version": __version__,
        "command": reproduce_command(options, results),
        # --force only says what may be overwritten: the same data with or without it.
        "options": options.model_dump(mode="json", exclude={"force"}),
        "inputs": inputs,
        "mode": state.mode,
        "format": state.format,
        "task": state.task,
        "model_kind": state.model_kind,
        "separator": state.separator,
        "stop": state.stop,
        "leading_space": state.leading_space,
        "counts": {
            "read": read,
            "kept": len(state.examples),
            **{name: len(items) for name, items in state.splits.items()},
        },
        "balance": balance,
        "splits": splits,
        "checks": [r.to_json() for r in results],
    }
