"""The readable terminal report of a prepare run (report.json holds the same facts, complete)."""

from __future__ import annotations

from typing import Any

from trimtab.data import diversity
from trimtab.data.checks import CheckResult

_MARK = {"ok": "[ok]  ", "info": "[info]", "warning": "[warn]", "error": "[err] "}


def format_check(result: CheckResult) -> str:
    """One check as a few indented lines: status, title, message, where, and the fix decision."""
    lines = [f"  {_MARK[result.status]} {result.title:<24} {result.message}"]
    if result.locations:
        more = (
            f" (+{result.count - len(result.locations)} more)"
            if result.count > len(result.locations)
            else ""
        )
        lines.append(f"  {'':<31}at {_where(result.locations)}{more}")
    if result.fix is not None and result.applied is not None:
        verdict = "applied" if result.applied else "not applied"
        lines.append(f"  {'':<31}fix: {result.fix.description}: {verdict} ({result.decided_by})")
    return "\n".join(lines)


def _where(locations: list[str]) -> str:
    """``a.csv:3, a.csv:9, b.csv:2`` → ``a.csv lines 3, 9; b.csv line 2``."""
    by_file: dict[str, list[str]] = {}
    for location in locations:
        file, _, line = location.rpartition(":")
        by_file.setdefault(file, []).append(line)
    return "; ".join(
        f"{file} line{'s' if len(lines) > 1 else ''} {', '.join(lines)}"
        for file, lines in by_file.items()
    )


def question(result: CheckResult) -> str:
    """The [Y/n] question asked in a terminal about a check's fix."""
    assert result.fix is not None
    kind = "Recommended" if result.fix.recommended else "Optional"
    choices = "[Y/n]" if result.fix.recommended else "[y/N]"
    return f"  - [{kind}] {result.fix.description} {choices}: "


def render(report: dict[str, Any], checks: list[CheckResult]) -> str:
    """The whole report for the terminal."""
    counts = report["counts"]
    inputs = ", ".join(i["path"] for i in report["inputs"])
    out = [
        f"Read {counts['read']:,} examples from {inputs}",
        f"Task: {report['task']}; format: {report['format']}",
        "",
        "Checks",
    ]
    out += [format_check(r) for r in checks]
    labels = sorted({k for s in report["splits"].values() for k in s.get("labels", {})})
    if labels:
        out += ["", "Class balance", f"  {'label':<12}{'train':>8}{'valid':>8}{'test':>8}"]
        for label in labels:
            row = "".join(
                f"{report['splits'][s].get('labels', {}).get(label, 0):>8,}"
                for s in ("train", "valid", "test")
            )
            out.append(f"  {label!r:<12}{row}")
        if report.get("balance"):
            out.append(
                f"  balanced with --balance {report['options']['balance']}: "
                f"train had {report['balance']['before']}"
            )
    lengths = next((r.details for r in checks if r.id == "token-lengths" and r.details), None)
    if lengths:
        out += [
            "",
            f"Token lengths ({lengths['model']})",
            f"  {'':<12}{'p50':>8}{'p95':>8}{'max':>8}",
        ]
        for part in ("prompt", "completion", "total"):
            s = lengths[part]
            out.append(f"  {part:<12}{s['p50']:>8,}{s['p95']:>8,}{s['max']:>8,}")
        if lengths["sampled"]:
            out.append(
                f"  (p50 and p95 from a random sample of {lengths['sampled']:,}; "
                "max and the count over --max-length are exact)"
            )
        tokens = (
            f"{lengths['tokens']:,} tokens in all"
            if "tokens" in lengths
            else f"about {lengths['tokens_estimated']:,} tokens in all"
        )
        out.append(
            f"  {lengths['over_max_length']:,} examples over --max-length "
            f"{lengths['max_length']}; {tokens}"
        )
    spread = next((r.details for r in checks if r.id == "diversity" and r.details), None)
    if spread:
        out += diversity.render(spread)
    out += ["", f"Wrote {report['options']['out']}/"]
    for name in ("train", "valid", "test"):
        out.append(f"  {name}.jsonl  {counts[name]:,} examples")
    out += ["  report.json", "", "Reproduce with:", f"  {report['command']}"]
    return "\n".join(out)
