"""End to end: the real ``trimtab`` command in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

TRIMTAB = [sys.executable, "-m", "trimtab"]


def run(
    *args: str, cwd: Path, stdin: int | None = subprocess.DEVNULL, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TRIMTAB, *args],
        cwd=cwd,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rows = [
        {"title": f"Title {i}", "body": f"Review number {i} says {word}.", "stars": s}
        for i, (word, s) in enumerate([("great", 5), ("bad", 1), ("fine", 3)] * 20)
    ]
    rows.append(dict(rows[0]))  # one exact duplicate
    path = tmp_path / "reviews.csv"
    lines = ["title,body,stars"] + [f'{r["title"]},"{r["body"]}",{r["stars"]}' for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_version_and_module_entry_point(tmp_path):
    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("trimtab ")


def test_prepare_writes_files_and_prints_a_readable_report(tmp_path, data):
    result = run(
        "prepare",
        str(data),
        "--prompt-template",
        r"{title}\n\n{body}",
        "--completion-field",
        "stars",
        "--out",
        "out",
        "--model",
        "none",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Class balance" in result.stdout and "Reproduce with:" in result.stdout
    first = json.loads((tmp_path / "out" / "train.jsonl").read_text().splitlines()[0])
    assert first["prompt"].startswith("Title ") and "\n\n" in first["prompt"]
    assert first["prompt"].endswith("\n\n###\n\n") and first["completion"].startswith(" ")


def test_not_a_terminal_never_waits_and_takes_the_recommended_defaults(tmp_path, data):
    # stdin is an open pipe that never sends anything: a question would hang until timeout.
    proc = subprocess.Popen(
        [
            *TRIMTAB,
            "prepare",
            str(data),
            "--prompt-template",
            "{body}",
            "--completion-field",
            "stars",
            "--out",
            "out",
            "--model",
            "none",
        ],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    dup = next(c for c in report["checks"] if c["id"] == "duplicates")
    assert dup["fix"] == {
        "id": "drop-duplicates",
        "description": dup["fix"]["description"],
        "recommended": True,
        "applied": True,
        "decided_by": "default",
    }


def test_in_a_terminal_each_fix_is_asked_and_the_answer_is_kept(tmp_path, data):
    """Answer 'n' to dropping duplicates and Enter (the default) to everything else."""
    command = [
        *TRIMTAB,
        "prepare",
        str(data),
        "--prompt-template",
        "{body}",
        "--completion-field",
        "stars",
        "--out",
        "out",
        "--model",
        "none",
    ]
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        command, cwd=tmp_path, stdin=slave, stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    seen, questions = b"", []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
                while b"]: " in seen:
                    question, _, seen = seen.partition(b"]: ")
                    questions.append(question.decode().splitlines()[-1])
                    os.write(master, b"n\n" if b"duplicates" in question else b"\n")
            elif proc.poll() is not None:
                break
        proc.wait(timeout=10)
    finally:
        proc.kill()
        os.close(master)
    assert proc.returncode == 0
    assert any("[Recommended] Remove 1 duplicates" in q for q in questions)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    decisions = {c["id"]: c["fix"] for c in report["checks"] if "fix" in c}
    assert decisions["duplicates"]["applied"] is False
    assert decisions["duplicates"]["decided_by"] == "asked"
    assert decisions["leading-space"]["applied"] is True
    assert "--skip-fix drop-duplicates" in report["command"]


def test_missing_field_exits_2_naming_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "1"}\n{"prompt": "b"}\n')
    result = run("prepare", str(bad), "--out", "out", "--model", "none", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{bad}:2: field 'completion': missing" in result.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_template_column_exits_2_listing_columns(tmp_path, data):
    result = run(
        "prepare",
        str(data),
        "--prompt-template",
        "{review_body}",
        "--completion-field",
        "stars",
        "--out",
        "out",
        "--model",
        "none",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "unknown column 'review_body' in --prompt-template" in result.stderr
    assert "body, stars, title" in result.stderr
    assert not (tmp_path / "out").exists()


def test_malformed_json_line_exits_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "1"}\n{"prompt": "b", \n')
    result = run("prepare", str(bad), "--out", "out", "--model", "none", cwd=tmp_path)
    assert result.returncode == 2 and f"{bad}:2: invalid JSON" in result.stderr


def test_missing_and_empty_files_exit_2(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    for name, message in (("nope.jsonl", "file not found"), ("empty.csv", "file is empty")):
        result = run("prepare", name, "--out", "out", "--model", "none", cwd=tmp_path)
        assert result.returncode == 2 and f"{name}: {message}" in result.stderr


def test_bad_options_are_all_reported_at_once(tmp_path, data):
    result = run(
        "prepare",
        str(data),
        "--out",
        "out",
        "--completion-field",
        "a",
        "--completion-template",
        "{b}",
        "--valid-size",
        "0.7",
        "--test-size",
        "0.4",
        "--fix",
        "bogus",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "not both" in result.stderr and "nothing for training" in result.stderr
    assert "unknown fix bogus" in result.stderr


def test_existing_outputs_need_force(tmp_path, data):
    args = (
        "prepare",
        str(data),
        "--prompt-template",
        "{body}",
        "--completion-field",
        "stars",
        "--out",
        "out",
        "--model",
        "none",
    )
    assert run(*args, cwd=tmp_path).returncode == 0
    before = (tmp_path / "out" / "train.jsonl").read_bytes()
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2 and "use --force" in result.stderr
    assert run(*args, "--force", cwd=tmp_path).returncode == 0
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == before


@pytest.mark.real_model
def test_marc_original_format_title_and_body_with_the_real_tokenizer(tmp_path, marc):
    fixtures = marc / "fixtures"
    result = run(
        "prepare",
        str(fixtures / "dataset_en_train.json"),
        "--valid-input",
        str(fixtures / "dataset_en_dev.json"),
        "--test-input",
        str(fixtures / "dataset_en_test.json"),
        "--prompt-template",
        r"{review_title}\n\n{review_body}",
        "--completion-field",
        "stars",
        "--task",
        "classification",
        "--valid-size",
        "0",
        "--out",
        "out",
        "--yes",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Token lengths (smollm2-135m)" in result.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"] == {"read": 15, "kept": 15, "train": 5, "valid": 5, "test": 5}
    first = json.loads((tmp_path / "out" / "test.jsonl").read_text().splitlines()[0])
    assert first["completion"] == " 1" and "\n\n" in first["prompt"]


def test_diversity_embedder_flag_reaches_the_check_and_the_report(tmp_path, data):
    result = run(
        "prepare", str(data), "--prompt-template", r"{title}\n\n{body}",
        "--completion-field", "stars", "--out", "out", "--model", "none",
        "--diversity-embedder", "bow", "--no-plots", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["options"]["diversity_embedder"] == "bow"
    assert "MiniLM" not in json.dumps([c for c in report["checks"] if "divers" in json.dumps(c)])
