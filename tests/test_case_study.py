"""The case-study script's docs page: figures redone on every run, findings kept."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("case_study", ROOT / "scripts/case_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MINILM = {
    "label": "minilm-full",
    "kind": "fine-tuned",
    "mode": "classification head",
    "n": 5000,
    "examples_per_s": 120.0,
    "classification": {
        "accuracy": 0.5612,
        "accuracy_ci95": [0.55, 0.57],
        "mae": 0.52,
        "off_by_one_accuracy": 0.91,
        "macro_f1": 0.55,
        "invalid": 0,
    },
    "training": {"seconds": 357.2, "tokens_per_s": 2888.3},
}

BASELINE = {
    "label": "smollm2-135m zero-shot",
    "kind": "zero-shot",
    "mode": "label scoring",
    "n": 1000,
    "examples_per_s": 28.9,
    "classification": {"accuracy": 0.187, "accuracy_ci95": [0.163, 0.213]},
}


def report_folder(tmp_path: Path, baselines: list[dict] | None = None) -> Path:
    folder = tmp_path / "report"
    (folder / "plots").mkdir(parents=True)
    (folder / "plots" / "comparison.png").write_bytes(b"\x89PNG fake")
    (folder / "report.json").write_text(
        json.dumps(
            {
                "results": [*(baselines or []), MINILM],
                "created": "2026-11-22T06:00:00",
                "trimtab_version": "0.1.0",
                "data": "test.jsonl",
            }
        )
    )
    return folder


def test_docs_page_has_each_runs_figures_and_copies_the_plots(tmp_path):
    script = load_script()
    script.write_docs(report_folder(tmp_path), tmp_path / "docs")
    page = (tmp_path / "docs" / "case-study.md").read_text()
    assert (
        "| minilm-full | fine-tuned | classification head | 5,000 | 0.561 [0.550, 0.570] | 0.520 |"
        in page
    )
    assert "— / — | 6.0 min | 2,888 | — | — | 120.0 |" in page
    assert (tmp_path / "docs" / "case-study" / "comparison.png").is_file()
    assert "![comparison](case-study/comparison.png)" in page


def test_findings_below_the_marker_survive_a_rewrite(tmp_path):
    script = load_script()
    docs = tmp_path / "docs"
    script.write_docs(report_folder(tmp_path), docs)
    page = docs / "case-study.md"
    page.write_text(page.read_text() + f"\n{script.FINDINGS}\n\nMiniLM wins on speed.\n")
    script.write_docs(tmp_path / "report", docs)
    text = page.read_text()
    assert text.count(script.FINDINGS) == 1 and "MiniLM wins on speed." in text


def test_docs_header_counts_the_fine_tuned_rows_and_every_row_has_its_n(tmp_path):
    script = load_script()
    script.write_docs(report_folder(tmp_path, [BASELINE]), tmp_path / "docs")
    page = (tmp_path / "docs" / "case-study.md").read_text()
    # The baseline comes first but saw 1,000 reviews: the header takes the fine-tuned 5,000.
    assert "(5,000 reviews of the official English test split; rows with a smaller n" in page
    assert "used the first 1,000)" in page
    assert "| Model | Kind | Mode | n |" in page
    assert "| smollm2-135m zero-shot | zero-shot | label scoring | 1,000 | 0.187 " in page
    assert "| minilm-full | fine-tuned | classification head | 5,000 | " in page


# --- the paths the docs name are the ones `make demo` writes --------------------------------------


def demo_out() -> Path:
    """The case study's folder under `make demo`: the Makefile's OUT, passed to the script."""
    makefile = (ROOT / "Makefile").read_text()
    out = re.search(r"^OUT \?= (\S+)$", makefile, re.M)
    assert out and "case_study.py demo --marc $(MARC) --out $(OUT)" in makefile
    assert load_script().DEFAULT_OUT["demo"] == out[1]  # the script alone writes there too
    return Path(out[1])


def demo_paths() -> set[str]:
    """Every folder `make demo` writes: the prepared data, each run, the report."""
    script = load_script()
    out = demo_out()
    runs = [str(script.run_folder(out, name)) for name in script.PROFILES["demo"]["runs"]]
    folders = (script.data_folder(out), script.report_folder(out), script.runs_folder(out))
    return {*map(str, folders), *runs}


def test_every_data_path_in_the_example_configs_is_written_by_make_demo():
    paths = demo_paths()
    named = {
        config.name: re.findall(r"--data (\S+)", config.read_text())
        for config in sorted((ROOT / "configs").glob("*.yaml"))
    }
    assert all(named.values()), f"a config without its train command: {named}"
    assert {p for found in named.values() for p in found} <= paths


def test_the_readmes_demo_paths_are_written_by_make_demo():
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"(runs/demo/[\w/.-]+)", readme))
    named -= {"runs/demo/my-report", "runs/demo/runs/NAME"}  # its own output, a placeholder
    assert named and named <= demo_paths(), named - demo_paths()


def test_the_case_study_trains_with_configs_that_exist():
    script = load_script()
    configs = [c for p in script.PROFILES.values() for c, _ in p["runs"].values()]
    assert configs and all((ROOT / c).is_file() for c in configs)


def test_the_demo_ends_with_a_serve_command_a_curl_calling_the_fine_tuned_decoder_and_the_console(
    tmp_path, tiny_llama_dir, capsys
):
    import json
    import shlex

    from trimtab.models.runs import write_meta

    final = tmp_path / "runs" / "smollm2-lora" / "final"
    final.mkdir(parents=True)
    (final / "adapter_config.json").write_text("{}")
    write_meta(final, {"base_model": str(tiny_llama_dir), "task": "sft", "method": "lora"})
    load_script().print_serving(tmp_path / "runs")
    serve, curl, console = capsys.readouterr().out.splitlines()
    assert serve == f"trimtab serve --runs {tmp_path / 'runs'}"
    assert console.startswith("console: http://127.0.0.1:8000/ ")
    words = shlex.split(curl)
    body = json.loads(words[words.index("-d") + 1])
    assert words[:3] == ["curl", "-s", "http://127.0.0.1:8000/v1/completions"]
    assert body["model"].startswith("ft:tiny-llama") and ":smollm2-lora:" in body["model"]


def test_another_language_is_found_as_a_csv_slice_or_as_the_original_json_files(tmp_path):
    script = load_script()
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "train.csv").write_text("review_body,stars\n")
    (tmp_path / "en" / "test.csv").write_text("review_body,stars\n")
    for split in ("train", "test"):
        (tmp_path / f"dataset_de_{split}.json").write_text("{}\n")
    assert script.marc_files(tmp_path, "en") == (
        tmp_path / "en" / "train.csv",
        tmp_path / "en" / "test.csv",
    )
    assert script.marc_files(tmp_path, "de") == (
        tmp_path / "dataset_de_train.json",
        tmp_path / "dataset_de_test.json",
    )
    assert script.marc_files(tmp_path, "fr") is None  # nothing there: the script says so


def test_the_real_marc_fixtures_of_every_language_are_found_by_the_case_study():
    fixtures = ROOT.parent / "shared" / "data" / "marc" / "fixtures"
    if not fixtures.is_dir():
        pytest.skip(f"MARC fixtures not found in {fixtures}")
    script = load_script()
    for lang in ("de", "en", "es", "fr", "ja", "zh"):
        found = script.marc_files(fixtures, lang)
        assert found is not None and all(f.is_file() for f in found), lang


@pytest.mark.parametrize(
    ("scale", "steps", "epochs", "limit"), [(1.0, 60, 4, 500), (0.3, 18, 1, 150)]
)
def test_the_demo_is_sized_to_the_measured_speed_without_dropping_a_stage(
    monkeypatch, scale, steps, epochs, limit
):
    script = load_script()
    monkeypatch.setattr(script, "demo_scale", lambda minutes: (scale, "a test"))
    full = script.PROFILES["demo"]
    sized = script.sized_demo(full, 10)
    assert sized["runs"].keys() == full["runs"].keys()
    assert sized["prepare"] == full["prepare"]
    lora, minilm = sized["runs"]["smollm2-lora"][1], sized["runs"]["minilm-classify"][1]
    assert f"max_steps={steps}" in lora and f"epochs={epochs}" in minilm
    assert sized["eval"][sized["eval"].index("--limit") + 1] == str(limit)
    assert full["eval"][full["eval"].index("--limit") + 1] == "500"  # the profile is not changed


def test_the_demo_scale_follows_the_probe_and_has_a_floor(monkeypatch):
    from trimtab.models import precision

    script = load_script()
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    fast = precision.PrecisionProbe(fp32_gflops=200, bf16_gflops=1800, threads=2, seconds=0.1)
    slow = precision.PrecisionProbe(fp32_gflops=20, bf16_gflops=1, threads=2, seconds=0.1)
    monkeypatch.setattr(precision, "measure_cpu", lambda: fast)
    assert script.demo_scale(10)[0] == 1.0
    monkeypatch.setattr(precision, "measure_cpu", lambda: slow)
    scale, why = script.demo_scale(10)
    assert scale == script.DEMO_MIN_SCALE and "fp32" in why
