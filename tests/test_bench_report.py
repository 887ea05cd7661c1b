"""bench/report.py: the benchmarks' summary rows become one table in docs/benchmarks.md.

No real benchmark runs here: the JSON files are written by hand in each schema the scripts use,
and the runner is tried on tiny stand-in scripts.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
MACHINE = {"cpu": "AMD EPYC", "cores": 2, "flags": ["avx512_bf16", "avx2"], "threads": 2}


@pytest.fixture(scope="module")
def report():
    sys.path.insert(0, str(BENCH))  # report.py imports servers.py from beside it
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_report"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def write(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def status(out: Path, key: str, state: str = "ok", **more) -> None:
    record = {"key": key, "state": state, "date": "2026-12-01T10:00:00", "machine": MACHINE}
    write(out / f"{key}.status.json", {**record, **more})


def engine_json(report) -> dict:
    row = report.summary_row(
        "decoding",
        "greedy decoding, 32 prompts (SmolLM2-135M)",
        "transformers model.generate",
        104.6,
        115.0,
        "tokens/s",
        ceiling="12% of 355 GFLOP/s fp32 2048² matmul",
        note="0 of 32 differ (goal: none)",
    )
    return {"summary": [row], "machine": {**MACHINE, "fp32_matmul_gflops": 355.0}}


def rows_of(report, out: Path, key: str) -> list[dict]:
    bench = next(b for b in report.BENCHES if b.key == key)
    return report.bench_rows(bench, out)


def test_summary_row_ratio_is_trimtab_over_peer_and_inverted_for_seconds(report):
    faster = report.summary_row("decoding", "x", "p", 50.0, 100.0, "tokens/s")
    quicker = report.summary_row(
        "prepare", "x", "p", 30.0, 10.0, "s", higher_is_better=False, precision="fp32"
    )
    assert faster["ratio"] == pytest.approx(2.0)
    assert quicker["ratio"] == pytest.approx(3.0)
    assert set(faster) == {
        "stage",
        "name",
        "peer",
        "peer_figure",
        "trimtab_figure",
        "unit",
        "higher_is_better",
        "ratio",
        "ceiling",
        "precision",
        "note",
    }
    assert report.summary_row("serving", "x", "p", None, 5.0, "tok/s")["ratio"] is None
    with pytest.raises(ValueError, match="stage"):
        report.summary_row("zero-shot", "x", "p", 1.0, 1.0, "s")


def test_ceiling_is_the_model_flop_rate_as_a_share_of_the_matmul_rate(report):
    text = report.matmul_ceiling(31.0, 100.0, "fp32 matmul at the model's shapes", "2 a weight")

    assert (
        text
        == "31% of 100 GFLOP/s fp32 matmul at the model's shapes (31.0 model GFLOP/s: 2 a weight)"
    )
    assert report.matmul_ceiling(31.0, None, "x", "y") is None


def test_table_goes_between_the_markers_and_the_prose_around_them_is_kept(report, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    write(out / "engine.json", engine_json(report))
    status(out, "engine")
    doc = tmp_path / "benchmarks.md"
    prose_before = "# Benchmarks\n\nWritten by hand: keep me.\n\n"
    prose_after = "\n\n## Profiles\n\nAlso kept.\n"
    doc.write_text(prose_before + f"{report.START}\n| old | table |\n{report.END}" + prose_after)

    report.write_doc(doc, [r for b in report.BENCHES for r in report.bench_rows(b, out)])

    text = doc.read_text()
    assert text.startswith(prose_before) and text.endswith(prose_after)
    inside = text[text.index(report.START) : text.index(report.END)]
    assert "| old | table |" not in inside
    line = next(x for x in inside.splitlines() if "greedy decoding" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "decoding"
    assert cells[2:6] == ["transformers model.generate", "105 tokens/s", "115 tokens/s", "1.10x"]
    assert cells[6].startswith("12% of 355 GFLOP/s")
    assert cells[7] == "AMD EPYC, avx512_bf16 avx2, 2 threads"
    assert cells[8] == "2026-12-01"
    assert "0 of 32 differ (goal: none)" in inside  # the note, under the table
    assert "fp32 2048² matmul 355 GFLOP/s" in inside  # the machine's rate, under the table


def test_rows_with_a_sub_stage_are_read_and_the_sub_stage_joins_the_name(report, tmp_path):
    harness_row = {
        "stage": "zero-shot",
        "peer": "lm-evaluation-harness 0.4.13 HFLM",
        "peer_figure": 20.0,
        "trimtab_figure": 50.0,
        "unit": "reviews/s",
        "ratio": 2.5,
        "agreement": 1.0,
    }
    write(tmp_path / "harness.json", {"rows": [harness_row], "machine": MACHINE})
    status(tmp_path, "harness")

    [row] = rows_of(report, tmp_path, "harness")

    assert row["stage"] == "evaluation"
    assert row["name"] == "label scoring, zero-shot"
    assert row["ratio"] == 2.5 and row["higher_is_better"] is True and row["state"] == "ok"


def test_rows_in_seconds_without_a_ratio_get_it_inverted(report, tmp_path):
    prepare_row = {"stage": "prepare", "peer": "OpenAI CLI 0.28.1", "unit": "s"}
    prepare_row.update(name="200,000 rows", peer_figure=40.0, trimtab_figure=20.0)
    write(tmp_path / "prepare.json", {"rows": [prepare_row], "machine": MACHINE})

    [row] = rows_of(report, tmp_path, "prepare")  # no status file: a JSON alone is read too

    assert row["higher_is_better"] is False and row["ratio"] == pytest.approx(2.0)
    assert row["date"]  # from the file's time


def test_a_json_of_the_old_format_without_summary_rows_shows_as_failed(report, tmp_path):
    write(tmp_path / "training.json", {"rows": [{"comparison": "sft", "seconds": 1.0}]})
    status(tmp_path, "training")

    [row] = rows_of(report, tmp_path, "training")

    assert row["state"] == "failed" and "no summary rows" in row["note"]


def test_failed_skipped_and_missing_benchmarks_show_as_such(report, tmp_path):
    log = tmp_path / "training.log"
    log.write_text("step 1\nRuntimeError: out of memory\n\n")
    status(tmp_path, "training", "failed", reason="exit 1", log=str(log))
    status(tmp_path, "eval", "skipped", reason="no fine-tuned SmolLM2 LoRA run")
    write(tmp_path / "serve.json", {"summary": [], "machine": MACHINE})
    status(tmp_path, "serve", skipped_parts=["llama-server: no binary"])

    rows = {b.key: report.bench_rows(b, tmp_path) for b in report.BENCHES}
    text = report.table([r for b in report.BENCHES for r in rows[b.key]])

    [failed] = rows["training"]
    assert failed["state"] == "failed"
    assert str(log) in failed["note"] and "RuntimeError: out of memory" in failed["note"]
    assert rows["eval"][0]["state"] == "skipped"
    assert "no fine-tuned SmolLM2 LoRA run" in rows["eval"][0]["note"]
    assert rows["engine"][0]["state"] == "not run"
    assert [r["state"] for r in rows["serve"]] == ["failed"]  # ran, but wrote no rows
    for state in ("| failed |", "| skipped |", "| not run |"):
        assert state in text


def test_a_benchmark_that_ran_shows_the_parts_it_skipped(report, tmp_path):
    write(tmp_path / "engine.json", engine_json(report))
    status(tmp_path, "engine", skipped_parts=["transformers-cb: not installed"])

    rows = rows_of(report, tmp_path, "engine")

    assert [r["state"] for r in rows] == ["ok", "skipped"]
    assert rows[1]["note"] == "transformers-cb: not installed"


def test_figures_ratios_and_machines_are_formatted_short(report):
    assert report.figure(1234.6, "examples/s") == "1,235 examples/s"
    assert report.figure(12.345, "tokens/s") == "12.3 tokens/s"
    assert report.figure(0.5, "s") == "0.5 s"
    assert report.figure(None, "s") == "-"
    assert report.ratio_text(2.3456) == "2.35x" and report.ratio_text(None) == "-"
    intel = {"cpu": "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz", "threads": 2}
    intel["flags"] = ["amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2"]
    assert (
        report.machine_text(intel) == "Intel Xeon Platinum 8480+, amx avx512_bf16 avx2, 2 threads"
    )
    assert report.machine_text({"gpu": "NVIDIA H200", **intel}) == "NVIDIA H200"
    assert report.cell("a|b") == "a\\|b"


def test_from_rebuilds_the_table_without_running_anything(report, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    out.mkdir()
    write(out / "engine.json", engine_json(report))
    status(out, "engine")

    def no_run(*args, **kwargs):
        raise AssertionError("--from must not run a benchmark")

    monkeypatch.setattr(subprocess, "Popen", no_run)
    monkeypatch.setattr(report, "run_bench", no_run)
    doc = tmp_path / "benchmarks.md"

    assert report.main(["--from", str(out), "--doc", str(doc)]) == 0

    text = doc.read_text()
    assert "# Benchmarks" in text and "## Columns" in text  # created from the template
    assert "115 tokens/s" in text and text.count(report.START) == 1


def test_a_page_without_markers_gets_the_table_appended(report, tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Mine\n\nNo markers here.\n")

    report.write_doc(doc, [])

    text = doc.read_text()
    assert text.startswith("# Mine\n\nNo markers here.\n")
    assert text.index(report.START) < text.index(report.END)


def test_runner_records_a_failure_with_its_log_and_still_runs_the_rest(
    report, tmp_path, monkeypatch
):
    good = tmp_path / "good.py"
    good.write_text(
        "import json, sys\n"
        "print('measuring')\n"
        "path = sys.argv[sys.argv.index('--json') + 1]\n"
        "row = dict(stage='decoding', name='n', peer='p', peer_figure=1.0, trimtab_figure=2.0,"
        " unit='tokens/s', ratio=2.0)\n"
        "json.dump({'summary': [row], 'machine': {}}, open(path, 'w'))\n"
    )
    bad = tmp_path / "bad.py"
    bad.write_text("raise SystemExit('the peer is missing')\n")
    benches = (
        report.Bench("prepare", "prepare", str(bad), "trimtab prepare", "OpenAI CLI"),
        report.Bench("engine", "decoding", str(good), "greedy decoding", "transformers"),
    )
    monkeypatch.setattr(report, "BENCHES", benches)
    monkeypatch.setattr(report, "plan", lambda bench, quick: ([], []))
    out, doc = tmp_path / "bench", tmp_path / "page.md"

    assert report.main(["--out", str(out), "--doc", str(doc), "--idle-wait", "0"]) == 0

    assert "measuring" in (out / "engine.log").read_text()
    assert json.loads((out / "prepare.status.json").read_text())["state"] == "failed"
    [failed] = report.bench_rows(benches[0], out)
    assert str(out / "prepare.log") in failed["note"]
    assert "the peer is missing" in failed["note"]
    [ok] = report.bench_rows(benches[1], out)
    assert ok["state"] == "ok" and ok["ratio"] == 2.0
    assert "| decoding | n, fp32" not in doc.read_text()  # no precision given: none shown
    assert "| decoding | n |" in doc.read_text()


def test_a_missing_prerequisite_skips_the_benchmark_with_its_reason(report, tmp_path, monkeypatch):
    def plan(bench, quick):
        raise report.Skip("trl not installed")

    monkeypatch.setattr(report, "plan", plan)
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("nothing may run"))
    out = tmp_path / "bench"
    bench = report.BENCHES[1]
    args = report.parse_args(["--out", str(out), "--idle-wait", "0"])
    out.mkdir()

    record = report.run_bench(bench, out, args)

    assert record["state"] == "skipped" and record["reason"] == "trl not installed"
    [row] = report.bench_rows(bench, out)
    assert row["state"] == "skipped" and row["note"] == "trl not installed"


def test_quick_runs_write_their_table_beside_their_results_not_into_docs(
    report, tmp_path, monkeypatch
):
    monkeypatch.setattr(report, "BENCHES", ())
    out = tmp_path / "bench"

    assert report.main(["--quick", "--out", str(out), "--idle-wait", "0"]) == 0

    assert (out / "benchmarks.md").is_file()


def test_a_benchmark_past_its_timeout_is_killed_and_shown_as_timed_out(
    report, tmp_path, monkeypatch
):
    slow = tmp_path / "slow.py"
    slow.write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    bench = report.Bench("engine", "decoding", str(slow), "greedy decoding", "transformers")
    monkeypatch.setattr(report, "plan", lambda bench, quick: ([], []))
    out = tmp_path / "bench"
    out.mkdir()
    args = report.parse_args(["--out", str(out), "--idle-wait", "0", "--timeout", "1"])

    record = report.run_bench(bench, out, args)

    assert record["state"] == "failed" and record["seconds"] < 30
    assert record["reason"] == "killed after --timeout 1 s"
    assert "started" in (out / "engine.log").read_text()
