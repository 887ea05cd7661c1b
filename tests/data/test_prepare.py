"""The prepare stage through its Python API: decisions, reports, determinism, atomicity."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from trimtab.cli import main
from trimtab.data import PrepareOptions, prepare
from trimtab.errors import ConfigError, DataError, OutputExistsError

REVIEWS = [
    ("Great product, works as described.", "5"),
    ("Terrible, broke after one day.", "1"),
    ("It is okay for the price.", "3"),
    ("I love it, my daughter uses it daily.", "5"),
    ("Battery lasts but the screen scratches.", "3"),
    ("Never arrived and no refund.", "1"),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    """60 labelled reviews (10 distinct per label pattern) plus one exact duplicate."""
    rows = [
        {"body": f"{text} Order {i}.", "stars": stars} for i in range(10) for text, stars in REVIEWS
    ]
    rows.append(dict(rows[3]))
    return write_jsonl(tmp_path / "reviews.jsonl", rows)


def options(
    tmp_path: Path, inputs: list[Path], tokenizer: Path | str = "none", **kw
) -> PrepareOptions:
    values = {
        "inputs": inputs,
        "out": tmp_path / "out",
        "model": str(tokenizer),
        "prompt_template": "{body}",
        "completion_field": "stars",
    } | kw
    return PrepareOptions.parse(values)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_writes_split_files_in_openai_format_with_separator_and_leading_space(tmp_path, reviews):
    result = prepare(options(tmp_path, [reviews]))
    out = tmp_path / "out"
    rows = (
        read_jsonl(out / "train.jsonl")
        + read_jsonl(out / "valid.jsonl")
        + read_jsonl(out / "test.jsonl")
    )
    assert len(rows) == 60  # the duplicate is removed by the recommended default
    assert all(r["prompt"].endswith("\n\n###\n\n") for r in rows)
    assert {r["completion"] for r in rows} == {" 1", " 3", " 5"}
    assert result.report["counts"] == {"read": 61, "kept": 60, "train": 48, "valid": 6, "test": 6}
    assert sorted(os.listdir(out)) == [
        "plots",
        "report.json",
        "test.jsonl",
        "train.jsonl",
        "valid.jsonl",
    ]
    assert os.listdir(out / "plots") == ["diversity.png"]


def test_same_input_and_seed_give_byte_identical_outputs(tmp_path, reviews, tiny_tokenizer_dir):
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        prepare(options(tmp_path, [reviews], tiny_tokenizer_dir, out=out, seed=7))
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    report_a = json.loads((first / "report.json").read_text())
    report_b = json.loads((second / "report.json").read_text())
    assert report_a["checks"] == report_b["checks"]


def test_rerun_of_the_same_command_gives_a_byte_identical_report(tmp_path, reviews):
    opts = options(tmp_path, [reviews], seed=3)
    prepare(opts)
    out = tmp_path / "out"
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    prepare(opts.model_copy(update={"force": True}))
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("plots/diversity.png") in before  # the figure too is the same, byte for byte
    assert before == after


def test_another_seed_shuffles_differently(tmp_path, reviews):
    prepare(options(tmp_path, [reviews], out=tmp_path / "a", seed=1))
    prepare(options(tmp_path, [reviews], out=tmp_path / "b", seed=2))
    assert (tmp_path / "a/train.jsonl").read_bytes() != (tmp_path / "b/train.jsonl").read_bytes()


def test_reproduce_command_redoes_the_run_without_questions(tmp_path, reviews, monkeypatch):
    answers = iter([False, True])  # decline the first offered fix, accept the second

    result = prepare(options(tmp_path, [reviews], seed=5), ask=lambda r: next(answers, True))
    command = result.report["command"]
    assert "--fix" in command and "--skip-fix" in command
    args = shlex.split(command)
    assert args[:2] == ["trimtab", "prepare"]
    replay = tmp_path / "replay"
    args[args.index("--out") + 1] = str(replay)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)  # a terminal, yet nothing is asked
    monkeypatch.setattr("builtins.input", lambda *_: pytest.fail("asked a question"))
    assert main(args[1:]) == 0
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl"):
        assert (replay / name).read_bytes() == (tmp_path / "out" / name).read_bytes()


def test_declined_fix_is_not_applied_and_recorded(tmp_path, reviews):
    result = prepare(options(tmp_path, [reviews]), ask=lambda r: r.fix.id != "drop-duplicates")
    dup = next(r for r in result.checks if r.id == "duplicates")
    assert (dup.applied, dup.decided_by) == (False, "asked")
    assert result.report["counts"]["kept"] == 61


def test_skip_fix_flag_wins_over_yes(tmp_path, reviews):
    result = prepare(options(tmp_path, [reviews], yes=True, skip_fix=["add-leading-space"]))
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert all(not r["completion"].startswith(" ") for r in rows)
    check = next(r for r in result.checks if r.id == "leading-space")
    assert check.decided_by == "--skip-fix"


def test_optional_fix_applies_only_when_asked_for(tmp_path, reviews):
    result = prepare(options(tmp_path, [reviews], yes=True, fix=["remove-prompt-prefix"]))
    assert next(r for r in result.checks if r.id == "prompt-prefix").status == "ok"
    result = prepare(options(tmp_path, [reviews], yes=True, force=True, fix=["lowercase"]))
    assert next(r for r in result.checks if r.id == "uppercase").fix is None


def test_report_json_lists_every_check_with_counts_and_locations(
    tmp_path, reviews, tiny_tokenizer_dir
):
    prepare(options(tmp_path, [reviews], tiny_tokenizer_dir))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    ids = [c["id"] for c in report["checks"]]
    for expected in (
        "quantity",
        "extra-fields",
        "invalid-utf8",
        "control-characters",
        "empty-fields",
        "task-type",
        "duplicates",
        "near-duplicates",
        "contradictions",
        "uppercase",
        "prompt-prefix",
        "prompt-suffix",
        "completion-prefix",
        "completion-suffix",
        "leading-space",
        "token-lengths",
        "long-examples",
        "multi-token-labels",
        "class-balance",
        "leakage",
        "class-quantity",
    ):
        assert expected in ids
    dup = next(c for c in report["checks"] if c["id"] == "duplicates")
    assert dup["count"] == 1
    assert dup["examples"] == [f"{reviews}:61"]
    assert dup["fix"]["applied"] is True
    assert report["task"] == "classification"
    assert report["splits"]["train"]["labels"] == {"1": 16, "3": 16, "5": 16}
    tokens = next(c for c in report["checks"] if c["id"] == "token-lengths")
    assert tokens["details"]["completion"]["max"] == 2
    assert report["inputs"][0]["sha256"]


def test_existing_outputs_are_not_overwritten_without_force(tmp_path, reviews):
    prepare(options(tmp_path, [reviews]))
    train = tmp_path / "out" / "train.jsonl"
    train.write_text("mine\n")
    with pytest.raises(OutputExistsError):
        prepare(options(tmp_path, [reviews]))
    assert train.read_text() == "mine\n"


def test_bad_input_writes_nothing(tmp_path, reviews):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "fine", "stars": "1"}\n{"body": "no label"}\n')
    with pytest.raises(DataError) as e:
        prepare(options(tmp_path, [reviews, bad]))
    assert f"{bad}:2: field 'stars': missing" in str(e.value)
    assert not (tmp_path / "out").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_failure_while_writing_leaves_no_partial_files(tmp_path, reviews, monkeypatch):
    import trimtab.data.writers as writers

    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        prepare(options(tmp_path, [reviews]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reviews.jsonl"]


def test_options_report_every_problem_at_once(tmp_path, reviews):
    with pytest.raises(ConfigError) as e:
        PrepareOptions.parse(
            {
                "inputs": [reviews],
                "out": tmp_path / "o",
                "completion_field": "a",
                "completion_template": "{b}",
                "valid_size": 0.6,
                "test_size": 0.5,
                "fix": ["nonsense"],
                "system": "be brief",
                "max_length": 0,
            }
        )
    assert "max_length" in str(e.value)  # pydantic's own type/range errors come first...
    with pytest.raises(ConfigError) as e:
        PrepareOptions.parse(
            {
                "inputs": [reviews],
                "out": tmp_path / "o",
                "completion_field": "a",
                "completion_template": "{b}",
                "valid_size": 0.6,
                "test_size": 0.5,
                "fix": ["nonsense"],
                "system": "be brief",
            }
        )
    problems = e.value.problems  # ...then every cross-option problem together
    assert len(problems) == 4
    assert any("not both" in p for p in problems)
    assert any("nothing for training" in p for p in problems)
    assert any("unknown fix nonsense" in p for p in problems)
    assert any("--system" in p for p in problems)


def test_valid_and_test_sizes_accept_counts(tmp_path, reviews):
    result = prepare(options(tmp_path, [reviews], valid_size=9, test_size=12))
    assert (result.report["counts"]["valid"], result.report["counts"]["test"]) == (9, 12)


def test_test_input_is_kept_whole_and_leakage_is_removed_from_train(tmp_path, reviews):
    # The same review as in train, rated differently: not a duplicate, but a leak.
    test = write_jsonl(
        tmp_path / "test.jsonl",
        [
            {"body": "Great product, works as described. Order 0.", "stars": "4"},
            {"body": "Unseen review text.", "stars": "1"},
        ],
    )
    result = prepare(options(tmp_path, [reviews], test_inputs=[test]))
    assert result.report["counts"]["test"] == 2
    leak = next(r for r in result.checks if r.id == "leakage")
    assert leak.status == "warning" and leak.applied
    train = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert not any(
        r["prompt"].startswith("Great product, works as described. Order 0.") for r in train
    )


def test_balance_down_equalises_training_classes_only(tmp_path):
    rows = [{"body": f"good {i}", "stars": "5"} for i in range(30)] + [
        {"body": f"bad {i}", "stars": "1"} for i in range(10)
    ]
    data = write_jsonl(tmp_path / "skewed.jsonl", rows)
    result = prepare(options(tmp_path, [data], balance="down", valid_size=0.2, test_size=0))
    report = result.report
    assert report["splits"]["train"]["labels"] == {"1": 8, "5": 8}
    assert report["splits"]["valid"]["labels"] == {"1": 2, "5": 6}
    assert report["balance"]["before"] == {"1": 8, "5": 24}


def test_chat_output_from_prompt_completion_with_system_message(tmp_path, reviews):
    prepare(options(tmp_path, [reviews], format="chat", system="Rate the review."))
    row = read_jsonl(tmp_path / "out" / "train.jsonl")[0]
    roles = [m["role"] for m in row["messages"]]
    assert roles == ["system", "user", "assistant"]
    assert row["messages"][0]["content"] == "Rate the review."
    assert "###" not in row["messages"][1]["content"]  # no separator in chat format


def test_chat_messages_pass_through(tmp_path):
    convo = [
        {
            "messages": [
                {"role": "user", "content": f"Rate: review {i}"},
                {"role": "assistant", "content": str(i % 5 + 1)},
            ]
        }
        for i in range(20)
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", convo)
    result = prepare(
        PrepareOptions.parse({"inputs": [data], "out": tmp_path / "out", "model": "none"})
    )
    assert result.report["format"] == "chat"
    rows = sum(
        (read_jsonl(tmp_path / "out" / f"{s}.jsonl") for s in ("train", "valid", "test")), []
    )
    assert sorted(r["messages"][0]["content"] for r in rows) == sorted(
        c["messages"][0]["content"] for c in convo
    )


def test_raw_text_for_unsupervised_training(tmp_path, tiny_tokenizer_dir):
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(f"line of text number {i}" for i in range(30)) + "\n\n")
    result = prepare(
        PrepareOptions.parse(
            {"inputs": [data], "out": tmp_path / "out", "model": str(tiny_tokenizer_dir)}
        )
    )
    assert (result.report["mode"], result.report["task"]) == ("text", "language-modeling")
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert set(rows[0]) == {"text"} and result.report["counts"]["kept"] == 30


def test_sample_keeps_a_seeded_random_subset(tmp_path, reviews):
    a = prepare(options(tmp_path, [reviews], sample=20, out=tmp_path / "a"))
    prepare(options(tmp_path, [reviews], sample=20, out=tmp_path / "b"))
    assert a.report["counts"]["read"] == 20
    assert (tmp_path / "a/train.jsonl").read_bytes() == (tmp_path / "b/train.jsonl").read_bytes()


def test_requested_separator_inside_the_data_is_an_error_naming_lines(tmp_path):
    data = write_jsonl(
        tmp_path / "d.jsonl", [{"body": f"a -> b {i}", "stars": "1"} for i in range(5)]
    )
    with pytest.raises(DataError) as e:
        prepare(options(tmp_path, [data], separator=" -> "))
    assert f"{data}:1" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_unknown_model_fails_before_reading_data(tmp_path):
    from trimtab.errors import TrimtabError

    with pytest.raises(TrimtabError) as e:
        prepare(options(tmp_path, [tmp_path / "missing.jsonl"], "no-such-model"))
    assert "no-such-model" in str(e.value)


@pytest.mark.real_model
def test_marc_case_study_with_the_real_smollm2_tokenizer(tmp_path, marc):
    result = prepare(
        PrepareOptions.parse(
            {
                "inputs": [marc / "en" / "train.csv"],
                "test_inputs": [marc / "en" / "test.csv"],
                "prompt_template": "{review_body}",
                "completion_field": "stars",
                "out": tmp_path / "out",
                "model": "smollm2-135m",
                "yes": True,
            }
        )
    )
    report = result.report
    assert report["task"] == "classification"
    assert report["counts"]["test"] == 5000
    assert set(report["splits"]["train"]["labels"]) == {"1", "2", "3", "4", "5"}
    labels = next(c for c in report["checks"] if c["id"] == "multi-token-labels")
    assert labels["details"]["tokens"][" 5"] == [" ", "5"]
    lengths = next(c for c in report["checks"] if c["id"] == "token-lengths")["details"]
    assert 20 < lengths["total"]["p50"] < 80 and lengths["total"]["max"] > 512


# --- decoder conventions (separator, leading space) are for decoders only ----------------------


def test_an_encoder_gets_no_separator_and_no_leading_space_and_the_report_says_so(
    tmp_path, reviews, tiny_bert_dir
):
    from trimtab.data.report import render

    result = prepare(options(tmp_path, [reviews], tiny_bert_dir))
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert all(r["prompt"].endswith(".") and "###" not in r["prompt"] for r in rows)
    assert {r["completion"] for r in rows} == {"1", "3", "5"}
    report = result.report
    assert (report["model_kind"], report["separator"], report["leading_space"]) == (
        "encoder",
        None,
        False,
    )
    note = next(c for c in report["checks"] if c["id"] == "model-conventions")
    message = (
        f"separator and leading space not added: {tiny_bert_dir} is an encoder "
        "(classification head)"
    )
    assert note["message"] == message
    assert message in render(report, result.checks)
    assert {c["id"] for c in report["checks"]}.isdisjoint({"prompt-suffix", "leading-space"})


def test_a_decoder_folder_still_gets_separator_and_leading_space(tmp_path, reviews, tiny_llama_dir):
    result = prepare(options(tmp_path, [reviews], tiny_llama_dir))
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert all(r["prompt"].endswith("\n\n###\n\n") for r in rows)
    assert {r["completion"] for r in rows} == {" 1", " 3", " 5"}
    assert result.report["model_kind"] == "decoder"
    assert "model-conventions" not in {c["id"] for c in result.report["checks"]}


def test_an_encoder_still_gets_a_separator_that_is_asked_for(tmp_path, reviews, tiny_bert_dir):
    prepare(options(tmp_path, [reviews], tiny_bert_dir, separator=" =>"))
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert all(r["prompt"].endswith(" =>") for r in rows)


@pytest.mark.real_model
def test_minilm_counts_real_token_lengths_and_gets_no_decoder_conventions(tmp_path, reviews):
    long = write_jsonl(
        tmp_path / "long.jsonl",
        [{"body": f"review {i}: " + "word " * 300, "stars": "3"} for i in range(6)],
    )
    result = prepare(options(tmp_path, [reviews, long], "minilm-l6", max_length=128))
    report = result.report
    assert report["model_kind"] == "encoder" and report["separator"] is None
    lengths = next(c for c in report["checks"] if c["id"] == "token-lengths")["details"]
    # The tokenizer.json pads and truncates at 128: counted that way every example was 128 + 2.
    assert lengths["total"]["p50"] < 30 and lengths["total"]["max"] > 300
    assert lengths["over_max_length"] == 6
