"""Benchmark `trimtab prepare` against the legacy OpenAI CLI's `fine_tunes.prepare_data`.

Both tools run as subprocesses on the same deterministic JSONL file of prompt/completion
pairs built from the MARC English training slice (`../shared/data/marc/en/train.csv`);
the file goes to a temp dir, never into the repository. The peer, `openai==0.28.1` with
exactly pinned dependencies, is installed on first use into `.bench/openai-venv` (needs
PyPI once; prepare_data itself runs offline). Each tool's whole run is timed (best of
--repeat), and the checks each tool reported are printed (and written with --json).

    .venv/bin/python bench/prepare.py                  # full benchmark, 200,000 rows
    .venv/bin/python bench/prepare.py --skip-trimtab   # the OpenAI peer only

With --json, the results carry ``rows`` (one per trimtab variant: stage, peer, peer_figure,
trimtab_figure in seconds, unit, ratio = peer seconds / trimtab seconds) and ``machine`` (the
CPU, its cores and features), the shape bench/report.py collects. /proc/loadavg is printed
before every timed run: the machine may be shared.
"""

import argparse
import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import cpu_features  # noqa: E402  (bench/servers.py)

REPO = Path(__file__).resolve().parent.parent
PEER = "OpenAI CLI 0.28.1 prepare_data"
OPENAI_VENV = REPO / ".bench" / "openai-venv"
# The whole dependency closure of openai[datalib]==0.28.1 as of its era (late 2023):
# pandas 2.1.4 + numpy 1.26.4 have CPython 3.11 wheels and run its validators unchanged.
OPENAI_PINS = [
    "openai[datalib]==0.28.1",
    "pandas==2.1.4",
    "numpy==1.26.4",
    "pandas-stubs==2.1.4.231227",
    "types-pytz==2023.3.1.1",
    "python-dateutil==2.8.2",
    "six==1.16.0",
    "pytz==2023.3.post1",
    "tzdata==2023.3",
    "openpyxl==3.1.2",
    "et-xmlfile==1.1.0",
    "requests==2.31.0",
    "urllib3==2.1.0",
    "idna==3.6",
    "charset-normalizer==3.3.2",
    "certifi==2023.11.17",
    "tqdm==4.66.1",
    "aiohttp==3.9.1",
    "multidict==6.0.4",
    "yarl==1.9.4",
    "frozenlist==1.4.1",
    "aiosignal==1.3.1",
    "attrs==23.1.0",
]
# (check id = validator name, status, regex) for every bullet openai/validators.py prints.
OPENAI_PATTERNS = [
    ("num_examples", "info", r"Your file contains (\d+) prompt-completion pairs"),
    ("read_any_format", "warning", r"Based on your file extension|appears to be in a JSONL? fo"),
    ("necessary_column", "warning", r"The `\w+` column/key should be lowercase"),
    ("additional_column", "warning", r"Additional columns/keys present are: (\[[^\]]*\])"),
    ("empty_completion", "warning", r"`completion` column/key should not .*?\[(\d+) indexes\]"),
    ("format_inferrer", "info", r"fine-tune a model for classification"),
    ("duplicated_rows", "warning", r"There are (\d+) duplicated prompt-completion sets"),
    ("long_examples", "warning", r"There are (\d+) examples that are very long"),
    ("lower_case", "warning", r"More than a third of your `\w+` column/key is uppercase"),
    ("common_prompt_suffix", "info", r"All prompts end with suffix"),
    ("common_prompt_suffix", "warning", r"not contain a common separator at the end of your pro"),
    ("common_prompt_prefix", "info", r"All prompts start with prefix"),
    ("common_completion_prefix", "warning", r"All completions start with prefix"),
    ("common_completion_suffix", "info", r"All completions end with suffix"),
    ("common_completion_suffix", "warning", r"not contain a common ending at the end of your co"),
    ("completion_space_start", "warning", r"The completion should start with a whitespace"),
]


def build_rows(data: Path, n: int, seed: int, dup_share: float = 0.01) -> list[tuple[str, str]]:
    """(review body, stars) in a seeded order; past the first pass each body is joined with
    another random review's body (a fresh pair each time); ~dup_share are exact repeats."""
    with data.open(newline="", encoding="utf-8") as f:
        src = [(r["review_body"], r["stars"]) for r in csv.DictReader(f)]
    rng = random.Random(seed)
    rng.shuffle(src)
    n_dup = int(n * dup_share)
    rows: list[tuple[str, str]] = []
    pairs: set[tuple[int, int]] = set()
    for i in range(n - n_dup):
        j = i % len(src)
        body, stars = src[j]
        if i >= len(src):
            r = rng.randrange(len(src))
            while r == j or (j, r) in pairs:
                r = rng.randrange(len(src))
            pairs.add((j, r))
            body = f"{body} {src[r][0]}"
        rows.append((body, stars))
    rows += [rows[rng.randrange(len(rows))] for _ in range(n_dup)]
    rng.shuffle(rows)
    return rows


def ensure_openai_venv() -> Path:
    marker, exe = OPENAI_VENV / "bench-pins.txt", OPENAI_VENV / "bin" / "openai"
    if exe.exists() and marker.exists() and marker.read_text().split() == OPENAI_PINS:
        return exe
    print(f"installing the peer into {OPENAI_VENV.relative_to(REPO)} (one-off, needs PyPI) ...")
    if not (OPENAI_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(OPENAI_VENV)], check=True)
    subprocess.run(
        [
            str(OPENAI_VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            *OPENAI_PINS,
        ],
        check=True,
    )
    marker.write_text("\n".join(OPENAI_PINS) + "\n")
    return exe


def run_timed(cmd: list[str], cwd: Path, timeout: float) -> dict:
    """Run cmd in cwd with stdin closed; wall time and its own peak RSS (via os.wait4)."""
    log, errlog = cwd / "stdout.log", cwd / "stderr.log"
    with log.open("wb") as out, errlog.open("wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
        killer = threading.Timer(timeout, os.killpg, (p.pid, signal.SIGKILL))
        killer.start()
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
        timed_out = killer.finished.is_set()
        killer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
    return {
        "seconds": seconds,
        "rc": p.returncode,
        "status": f"killed after {timeout:g} s" if timed_out else f"exit {p.returncode}",
        "peak_rss_mb": usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10),
        "stdout": log.read_text(errors="replace"),
        "stderr": errlog.read_text(errors="replace"),
    }


def bench(
    tool: str, cmd_for: Callable[[Path], list[str]], repeat: int, work: Path, timeout: float
) -> tuple[dict, str, Path]:
    """Best of `repeat` runs, each in a fresh dir; exits with the tool's output if one fails."""
    runs = []
    loads = []
    for i in range(repeat):
        (cwd := work / f"{tool}-{i}").mkdir()
        cmd = cmd_for(cwd)
        loads.append(loadavg())
        print(f"  loadavg before {tool} run {i + 1}: {loads[-1]}")
        res = run_timed(cmd, cwd, timeout)
        if res["rc"] != 0:
            sys.exit(
                f"\n{tool} failed ({res['status']}): {' '.join(cmd)}\n--- stdout (tail) ---\n"
                f"{res['stdout'][-3000:]}\n--- stderr (tail) ---\n{res['stderr'][-8000:]}"
            )
        runs.append(res)
        print(f"  {tool} run {i + 1}/{repeat}: {res['seconds']:.2f} s, {res['peak_rss_mb']:.0f} MB")
    timing = {
        "seconds": min(r["seconds"] for r in runs),
        "runs_s": [round(r["seconds"], 3) for r in runs],
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
        "loadavg_before": loads,
    }
    return timing, runs[-1]["stdout"], cwd


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (how busy others kept the machine)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def parse_openai(stdout: str) -> tuple[list[dict], list[str]]:
    """Checks prepare_data reported (its bullets) and the fixes it applied. (A validator
    error, e.g. no `prompt` key, aborts it with exit 1, which fails the benchmark.)"""
    analysis = re.split(r"\n\n(?:Based on the analysis|No remediations found)", stdout)[0]
    checks: list[dict] = []
    for bullet in analysis.split("\n- ")[1:]:
        bullet = re.sub(
            r"These are rows: \[([^\]]*)\]",
            lambda m: f"These are rows: [{m[1].count(',') + 1} indexes]",
            bullet,
        )
        for cid, status, rx in OPENAI_PATTERNS:
            if m := re.search(rx, bullet):
                g = m.group(1) if m.groups() else None
                count = None if g is None else int(g) if g.isdigit() else g.count(",") + 1
                if status == "info" and re.search(r"WARNING|very long|doesn't require", bullet):
                    status = "warning"  # a prefix/suffix the validator objects to
                checks.append({"id": cid, "status": status, "count": count, "message": bullet})
                break
        else:  # a follow-up bullet of the previous validator (the first bullet always matches)
            checks[-1]["message"] += "\n- " + bullet
    actions = re.findall(r"^- \[(?:Recommended|Necessary)\] (.+?)(?: \[Y/n\]: Y)?$", stdout, re.M)
    return checks, actions


def parse_trimtab(outdir: Path) -> list[dict]:
    report = outdir / "report.json"
    try:
        checks = json.loads(report.read_text())["checks"]
        keys = ("id", "title", "status", "count", "message")
        return [{k: c.get(k) for k in keys} for c in checks]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        sys.exit(f"trimtab exited 0 but {report} is missing or not in the expected shape: {e!r}")


def print_checks(title: str, checks: list[dict]) -> None:
    print(f"\n{title}")
    for c in checks:
        msg = " ".join(str(c.get("message") or "").split())
        count = "-" if (n := c.get("count")) is None else f"{n:,}" if isinstance(n, int) else str(n)
        print(f"  {c['id']!s:<26} {c['status']!s:<8} {count:>9}  {msg[:100]}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows in the generated file")
    ap.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared/data/marc/en/train.csv",
        help="MARC-style train.csv (row_index,review_body,stars)",
    )
    ap.add_argument("--seed", type=int, default=1234, help="seed of the generated file")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool; the best is reported")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before a run is killed")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the generated file and outputs")
    ap.add_argument("--skip-trimtab", action="store_true", help="run the OpenAI peer only")
    ap.add_argument("--skip-openai", action="store_true", help="run trimtab only")
    ap.add_argument(
        "--trimtab",
        type=Path,
        default=REPO / ".venv/bin/trimtab",
        help="trimtab executable (default: the repo's .venv)",
    )
    return ap.parse_args()


def write_bench_file(args: argparse.Namespace, work: Path) -> tuple[Path, list, int]:
    """The generated JSONL file in work, its rows and how many are exact duplicates."""
    data = work / "marc_prepare.jsonl"
    rows = build_rows(args.data, args.rows, args.seed)
    with data.open("w", encoding="utf-8") as f:
        f.writelines(
            json.dumps({"prompt": p, "completion": c}, ensure_ascii=False) + "\n" for p, c in rows
        )
    dups = len(rows) - len(set(rows))
    print(
        f"data: {len(rows):,} rows, {data.stat().st_size / 1e6:.1f} MB, {dups:,} exact "
        f"duplicate rows, {len({c for _, c in rows})} labels (seed {args.seed}, {args.data})"
    )
    return data, rows, dups


def bench_openai(args: argparse.Namespace, data: Path, work: Path) -> dict:
    exe = ensure_openai_venv()

    def openai_cmd(cwd: Path) -> list[str]:
        shutil.copyfile(data, cwd / data.name)  # its *_prepared*.jsonl land next to it
        return [str(exe), "tools", "fine_tunes.prepare_data", "-f", data.name, "-q"]

    timing, stdout, cwd = bench("openai", openai_cmd, args.repeat, work, args.timeout)
    checks, actions = parse_openai(stdout)
    outputs = sorted(p.name for p in cwd.glob("*_prepared*.jsonl"))
    return {
        "version": OPENAI_PINS[0].split("==")[1],
        **timing,
        "checks": checks,
        "actions": actions,
        "outputs": outputs,
    }


def trimtab_version(trimtab: Path) -> str:
    """The trimtab version installed next to the executable ("?" if it cannot say)."""
    try:
        version = subprocess.run(
            [
                str(trimtab.parent / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('trimtab'))",
            ],
            capture_output=True,
            text=True,
        )
    except OSError:  # no Python beside it (a wrapper script)
        return "?"
    return version.stdout.strip() or "?"


def prepare_help(trimtab: Path) -> str:
    """`trimtab prepare --help`: which options this trimtab has."""
    return subprocess.run(
        [str(trimtab), "prepare", "--help"], capture_output=True, text=True
    ).stdout


def bench_trimtab(args: argparse.Namespace, data: Path, work: Path) -> dict[str, dict]:
    if not args.trimtab.exists():
        sys.exit(f"{args.trimtab} not found: pip install -e . first, or use --skip-trimtab")
    version = trimtab_version(args.trimtab)
    tools: dict[str, dict] = {}
    # The default run counts every example's tokens with SmolLM2's real tokenizer and embeds
    # the diversity check's sample with MiniLM, neither of which OpenAI's tool does;
    # `--diversity-embedder bow` (where the CLI has it) shows the run without MiniLM, and
    # `--model none` what the rest costs without token counts.
    variants = [("trimtab", [])]
    if "--diversity-embedder" in prepare_help(args.trimtab):
        variants.append(("trimtab-bow", ["--diversity-embedder", "bow"]))
    variants.append(("trimtab-notok", ["--model", "none"]))
    for tool, extra in variants:

        def trimtab_cmd(cwd: Path, extra: list[str] = extra) -> list[str]:
            return [
                str(args.trimtab),
                "prepare",
                str(data),
                "--out",
                str(cwd / "out"),
                "--yes",
                "--force",
                *extra,
            ]

        timing, _, cwd = bench(tool, trimtab_cmd, args.repeat, work, args.timeout)
        tools[tool] = {
            "version": version,
            "args": extra,
            **timing,
            "checks": parse_trimtab(cwd / "out"),
        }
    return tools


def print_speed(tools: dict[str, dict], n_rows: int, results: dict) -> None:
    """The timing table (adding rows_per_s to each tool) and the ratios to OpenAI's seconds,
    one summary row per trimtab variant in results["rows"]."""
    print("\ntool           version       rows   seconds    rows/s   peak RSS")
    for tool, t in tools.items():
        t["rows_per_s"] = round(n_rows / t["seconds"], 1)
        print(
            f"{tool:<14} {t['version']:<8} {n_rows:>9,} {t['seconds']:>9.2f} "
            f"{t['rows_per_s']:>9,.0f} {t['peak_rss_mb']:>7,.0f} MB"
        )
    if "openai" not in tools:
        return
    names = {
        "trimtab": "trimtab prepare",
        "trimtab-bow": "trimtab prepare --diversity-embedder bow",
        "trimtab-notok": "trimtab prepare --model none",
    }
    for tool, name in names.items():
        if tool not in tools:
            continue
        peer, ours = tools["openai"]["seconds"], tools[tool]["seconds"]
        ratio = peer / ours  # the same as the ratio of rows/s
        results[f"ratio_{tool.replace('-', '_')}_over_openai"] = round(ratio, 2)
        results["rows"].append(
            {
                "stage": "prepare",
                "name": name,
                "peer": PEER,
                "peer_figure": round(peer, 3),
                "trimtab_figure": round(ours, 3),
                "unit": f"s ({n_rows / 1000:g}k rows)",
                "higher_is_better": False,
                "ratio": round(ratio, 3),
            }
        )
        print(f"{tool}: OpenAI seconds / {tool} seconds = {ratio:.2f}x")


def print_tool_checks(tools: dict[str, dict]) -> None:
    if "openai" in tools:
        print_checks(
            f"OpenAI {tools['openai']['version']} prepare_data checks (its stdout):",
            tools["openai"]["checks"],
        )
        print("  fixes applied with -q: " + "; ".join(tools["openai"]["actions"]))
    if "trimtab" in tools:
        print_checks("trimtab prepare checks (from report.json):", tools["trimtab"]["checks"])


def run_benchmark(args: argparse.Namespace, work: Path) -> None:
    data, rows, dups = write_bench_file(args, work)
    tools: dict[str, dict] = {}
    machine = cpu_features()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {' '.join(machine['flags'])}")
    results: dict = {
        "rows": [],  # the summary rows, filled by print_speed
        "machine": machine,
        "data": {
            "rows": len(rows),
            "exact_duplicates": dups,
            "seed": args.seed,
            "source": str(args.data),
        },
        "tools": tools,
    }
    if not args.skip_openai:
        tools["openai"] = bench_openai(args, data, work)
    if not args.skip_trimtab:
        tools.update(bench_trimtab(args, data, work))
    print_speed(tools, len(rows), results)
    print_tool_checks(tools)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"\nwrote {args.json}")


def main() -> None:
    args = parse_args()
    if not args.data.is_file():
        sys.exit(f"{args.data} not found (point --data at a MARC-style train.csv)")
    work = Path(tempfile.mkdtemp(prefix="trimtab-bench-"))
    try:
        run_benchmark(args, work)
    finally:
        if args.keep:
            print(f"kept the generated file and tool outputs in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
