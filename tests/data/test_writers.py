"""Output records in each format, and all-or-nothing writing of the output folder."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import pytest

from trimtab import files
from trimtab.data import writers
from trimtab.data.examples import Example
from trimtab.data.writers import OUTPUT_FILES, check_output_dir, jsonl, to_record, write_atomically
from trimtab.errors import OutputExistsError, TrimtabError

OLD_TIME = 1_000_000_000  # 2001: any rewrite would move the mtime far from this

FILES = {
    "train.jsonl": '{"prompt": "a", "completion": "1"}\n{"prompt": "b", "completion": "2"}\n',
    "valid.jsonl": '{"prompt": "c", "completion": "3"}\n',
    "test.jsonl": "",
    "report.json": '{"examples": 3}\n',
}


def supervised(prompt: str = "Review: good\nStars:", completion: str = " 5") -> Example:
    return Example("in.csv", 2, prompt=prompt, completion=completion)


def staging_folders(parent: Path, name: str = "out") -> list[Path]:
    return sorted(parent.glob(f".{name}.tmp-*"))


def old_outputs(folder: Path) -> dict[str, tuple[str, int]]:
    """Fill folder with old outputs and one unrelated file, dated in the past; snapshot it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*OUTPUT_FILES, "notes.txt"):
        path = folder / name
        path.write_text(f"old {name}\n", encoding="utf-8")
        os.utime(path, (OLD_TIME, OLD_TIME))
    return snapshot(folder)


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        p.name: (p.read_text(encoding="utf-8"), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
    }


# --- to_record ----------------------------------------------------------------------------------


def test_prompt_completion_record_has_exactly_prompt_and_completion():
    assert to_record(supervised(), "supervised", "prompt-completion", system="ignored") == {
        "prompt": "Review: good\nStars:",
        "completion": " 5",
    }


def test_chat_record_from_supervised_example_with_a_system_message():
    assert to_record(supervised(), "supervised", "chat", system="Rate the review.") == {
        "messages": [
            {"role": "system", "content": "Rate the review."},
            {"role": "user", "content": "Review: good\nStars:"},
            {"role": "assistant", "content": " 5"},
        ]
    }


@pytest.mark.parametrize("system", [None, ""])
def test_chat_record_from_supervised_example_without_a_system_message(system):
    assert to_record(supervised(), "supervised", "chat", system=system) == {
        "messages": [
            {"role": "user", "content": "Review: good\nStars:"},
            {"role": "assistant", "content": " 5"},
        ]
    }


def test_chat_examples_pass_their_messages_through_unchanged():
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ex = Example("c.jsonl", 1, messages=messages)
    record = to_record(ex, "chat", "chat", system="not added to existing chats")
    assert record == {"messages": messages}


def test_text_record_from_text_example():
    ex = Example("t.txt", 1, text="Just some text.")
    assert to_record(ex, "text", "text", system=None) == {"text": "Just some text."}


def test_text_record_from_supervised_example_is_prompt_then_completion():
    assert to_record(supervised(), "supervised", "text", system="ignored") == {
        "text": "Review: good\nStars: 5"
    }


# --- jsonl --------------------------------------------------------------------------------------


def test_jsonl_writes_one_json_object_per_line():
    records = [
        {"prompt": "line one\nline two", "completion": " 5"},
        {"messages": [{"role": "user", "content": "q"}]},
        {"text": 'quote " and backslash \\'},
    ]
    out = jsonl(records)
    assert out.endswith("\n")
    lines = out.split("\n")[:-1]
    assert len(lines) == 3
    assert [json.loads(line) for line in lines] == records


def test_jsonl_keeps_non_ascii_characters_as_is():
    out = jsonl([{"text": "Très bien — 五つ星 ⭐"}])
    assert out == '{"text": "Très bien — 五つ星 ⭐"}\n'
    assert "\\u" not in out


def test_jsonl_of_no_records_is_empty():
    assert jsonl([]) == ""


# --- write_atomically: success ------------------------------------------------------------------


def test_write_atomically_creates_a_new_folder_with_every_file(tmp_path):
    out = tmp_path / "deep" / "er" / "out"
    write_atomically(out, FILES, force=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    for name, content in FILES.items():
        assert (out / name).read_bytes() == content.encode("utf-8")
    assert staging_folders(out.parent) == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_write_atomically_writes_utf8_with_unix_line_ends(tmp_path):
    out = tmp_path / "out"
    write_atomically(out, {"train.jsonl": jsonl([{"text": "é\r\nü"}]) + "x\n"}, force=False)
    assert (out / "train.jsonl").read_bytes() == '{"text": "é\\r\\nü"}\nx\n'.encode()


def test_write_atomically_stages_in_a_hidden_sibling_folder(tmp_path, monkeypatch):
    out = tmp_path / "out"
    seen: list[list[str]] = []
    out_existed: list[bool] = []
    real_fsync = os.fsync

    def watching_fsync(fd):
        seen.append([p.name for p in staging_folders(tmp_path) if p.is_dir()])
        out_existed.append(out.exists())
        return real_fsync(fd)

    monkeypatch.setattr(writers.os, "fsync", watching_fsync)
    write_atomically(out, FILES, force=False)
    assert len(seen) == len(FILES)
    assert all(len(folders) == 1 for folders in seen), seen
    assert len({folders[0] for folders in seen}) == 1  # one staging folder for all files
    assert out_existed == [False] * len(FILES)  # the folder appears only once all are written
    assert out.is_dir()
    assert staging_folders(tmp_path) == []


def test_write_atomically_into_existing_folder_without_outputs_needs_no_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    write_atomically(out, FILES, force=False)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert (out / "train.jsonl").read_text(encoding="utf-8") == FILES["train.jsonl"]
    assert staging_folders(tmp_path) == []


def test_write_atomically_refuses_to_overwrite_outputs_without_force(tmp_path):
    out = tmp_path / "out"
    before = old_outputs(out)
    with pytest.raises(OutputExistsError) as info:
        write_atomically(out, FILES, force=False)
    message = str(info.value)
    assert message.startswith(
        f"{out}: already holds train.jsonl, valid.jsonl, test.jsonl, report.json"
    )
    assert "--force" in message
    assert isinstance(info.value, TrimtabError) and info.value.exit_code == 2
    assert snapshot(out) == before
    assert staging_folders(tmp_path) == []


def test_a_single_existing_output_file_is_enough_to_refuse(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}", encoding="utf-8")
    with pytest.raises(OutputExistsError, match=r"already holds report\.json;"):
        write_atomically(out, FILES, force=False)
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]


def test_write_atomically_with_force_overwrites_outputs_and_keeps_other_files(tmp_path):
    out = tmp_path / "out"
    before = old_outputs(out)
    write_atomically(out, FILES, force=True)
    for name, content in FILES.items():
        assert (out / name).read_text(encoding="utf-8") == content
        assert (out / name).stat().st_mtime_ns != before[name][1]
    assert snapshot(out)["notes.txt"] == before["notes.txt"]
    assert staging_folders(tmp_path) == []


def test_existing_folder_is_replaced_in_one_swap_all_old_until_all_new(tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = old_outputs(out)
    seen: dict[str, dict[str, str]] = {}
    real_exchange = files._exchange

    def watching_exchange(a, b):
        seen["out"] = {p.name: p.read_text(encoding="utf-8") for p in Path(b).iterdir()}
        seen["staged"] = {p.name: p.read_text(encoding="utf-8") for p in Path(a).iterdir()}
        return real_exchange(a, b)

    monkeypatch.setattr(files, "_exchange", watching_exchange)
    write_atomically(out, FILES, force=True)
    assert seen["out"] == {name: text for name, (text, _) in before.items()}  # untouched so far
    assert seen["staged"] == FILES | {"notes.txt": before["notes.txt"][0]}
    assert {p.name: p.read_text(encoding="utf-8") for p in out.iterdir()} == seen["staged"]


# --- write_atomically: failures -----------------------------------------------------------------


def fail_on_second(monkeypatch, target: str) -> None:
    """Make os.fsync or open raise on the second file written."""
    calls = {"n": 0}
    if target == "fsync":
        real = os.fsync

        def flaky(fd):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(28, "No space left on device")
            return real(fd)

        monkeypatch.setattr(writers.os, "fsync", flaky)
    else:
        real_open = builtins.open

        def flaky_open(file, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(28, "No space left on device")
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(writers, "open", flaky_open, raising=False)


@pytest.mark.parametrize("target", ["fsync", "open"])
def test_failure_midway_leaves_no_new_output_folder_and_no_staging(tmp_path, monkeypatch, target):
    out = tmp_path / "out"
    fail_on_second(monkeypatch, target)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(out, FILES, force=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["fsync", "open"])
def test_failure_midway_leaves_an_existing_folder_untouched(tmp_path, monkeypatch, target):
    out = tmp_path / "out"
    before = old_outputs(out)
    fail_on_second(monkeypatch, target)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(out, FILES, force=True)
    assert snapshot(out) == before
    assert staging_folders(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_path_that_is_a_regular_file_is_an_error(tmp_path):
    out = tmp_path / "out"
    out.write_text("precious", encoding="utf-8")
    for force in (False, True):
        with pytest.raises(TrimtabError) as info:
            write_atomically(out, FILES, force=force)
        assert not isinstance(info.value, OutputExistsError)
        assert str(info.value) == f"{out}: exists and is not a folder"
    assert out.read_text(encoding="utf-8") == "precious"
    assert staging_folders(tmp_path) == []


# --- check_output_dir ---------------------------------------------------------------------------


def test_check_output_dir_accepts_a_missing_folder_and_creates_nothing(tmp_path):
    check_output_dir(tmp_path / "new", force=False)
    assert list(tmp_path.iterdir()) == []


def test_check_output_dir_with_force_accepts_existing_outputs(tmp_path):
    old_outputs(tmp_path / "out")
    check_output_dir(tmp_path / "out", force=True)


def test_check_output_dir_lists_only_the_outputs_that_exist(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "valid.jsonl").write_text("", encoding="utf-8")
    (out / "test.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(OutputExistsError) as info:
        check_output_dir(out, force=False)
    assert str(info.value) == (
        f"{out}: already holds valid.jsonl, test.jsonl; use --force to overwrite"
    )


def test_failure_at_the_swap_leaves_every_old_file(tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = old_outputs(out)

    def failing_exchange(a, b):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files, "_exchange", failing_exchange)
    with pytest.raises(OSError, match="Input/output error"):
        write_atomically(out, FILES, force=True)
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_subfolders_of_the_output_folder_are_kept(tmp_path):
    out = tmp_path / "out"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "a.png").write_bytes(b"png")
    write_atomically(out, FILES, force=False)
    assert (out / "plots" / "a.png").read_bytes() == b"png"
    assert (out / "train.jsonl").read_text(encoding="utf-8") == FILES["train.jsonl"]


def test_staging_left_by_a_dead_process_is_cleaned_up(tmp_path):
    dead = tmp_path / ".out.tmp-999999999"
    dead.mkdir()
    (dead / "train.jsonl").write_text("half\n")
    write_atomically(tmp_path / "out", {"train.jsonl": "x\n"}, force=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
