"""Reading every supported input format into records that know their file and 1-based line."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import pytest

from trimtab.data.readers import FORMATS, Record, detect_format, read_records
from trimtab.data.writers import jsonl
from trimtab.errors import MAX_PROBLEMS, DataError, TrimtabError

FFFD = "\ufffd"


def write(folder: Path, name: str, content: bytes | str) -> Path:
    path = folder / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def lines_of(records: list[Record]) -> list[int]:
    return [r.line for r in records]


def fields_of(records: list[Record]) -> list[dict]:
    return [r.fields for r in records]


def read_error(path: Path) -> DataError:
    with pytest.raises(DataError) as info:
        read_records(path)
    return info.value


def parquet_bytes(columns: dict[str, list]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def xlsx_bytes(
    rows: list[list],
    *,
    cells: dict[str, object] | None = None,
    extra_sheet: list[list] | None = None,
) -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    for ref, value in (cells or {}).items():
        sheet[ref] = value
    if extra_sheet is not None:
        other = workbook.create_sheet("second")
        for row in extra_sheet:
            other.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


# --- Small, valid sample of every format, used for the gzip and BOM round trips ---------------

SAMPLES: dict[str, bytes] = {
    "jsonl": b'{"text": "one"}\n\n{"text": "two"}\n',
    "json": b'[\n  {"text": "one"},\n\n  {"text": "two"}\n]\n',
    "csv": b"text\none\n\ntwo\n",
    "tsv": b"text\tlabel\none\t1\n\ntwo\t2\n",
    "txt": b"one\n\ntwo\n",
}
SAMPLE_LINES = {"jsonl": [1, 3], "json": [2, 4], "csv": [2, 4], "tsv": [2, 4], "txt": [1, 3]}


# --- Format detection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("data.jsonl", ("jsonl", False)),
        ("data.JSON", ("json", False)),
        ("data.csv.gz", ("csv", True)),
        ("data.TSV.GZ", ("tsv", True)),
        ("my.reviews.v2.parquet", ("parquet", False)),
        ("sheet.xlsx.gz", ("xlsx", True)),
        ("notes.txt", ("txt", False)),
    ],
)
def test_detect_format_reads_the_extension_and_an_optional_gz(name, expected):
    assert detect_format(Path(name)) == expected


@pytest.mark.parametrize("name", ["data.xls", "data.yaml", "data", "data.gz", "data.csv.zip"])
def test_detect_format_rejects_unsupported_extensions_naming_the_file_and_the_choices(name):
    with pytest.raises(DataError) as info:
        detect_format(Path(name))
    message = str(info.value)
    assert message.startswith(f"{name}: unsupported file type")
    for fmt in FORMATS:
        assert f".{fmt}" in message
    assert info.value.problems[0].file == name


# --- JSON Lines ---------------------------------------------------------------------------------


def test_jsonl_records_carry_1_based_physical_line_numbers_and_skip_blank_lines(tmp_path):
    path = write(
        tmp_path,
        "d.jsonl",
        '{"prompt": "a", "completion": "1"}\n\n   \n{"prompt": "b", "completion": 2}\r\n'
        '{"prompt": "ü", "completion": null}',
    )
    records = read_records(path)
    assert lines_of(records) == [1, 4, 5]
    assert fields_of(records) == [
        {"prompt": "a", "completion": "1"},
        {"prompt": "b", "completion": 2},
        {"prompt": "ü", "completion": None},
    ]
    assert all(r.file == str(path) and not r.bad_utf8 for r in records)
    assert records[1].where == f"{path}:4"


def test_jsonl_keeps_nested_values_as_parsed_json(tmp_path):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    path = write(tmp_path, "chat.jsonl", json.dumps({"messages": messages}) + "\n")
    assert read_records(path)[0].fields == {"messages": messages}


# --- JSON arrays and JSON Lines named .json -----------------------------------------------------


def test_json_array_element_spanning_several_lines_gets_its_first_line(tmp_path):
    path = write(
        tmp_path,
        "d.json",
        "[\n"
        '  {"text": "one"},\n'
        "  {\n"
        '    "text": "two",\n'
        '    "label": 2\n'
        "  },\n"
        "\n"
        '  {"text":\n'
        '   "three"}\n'
        "]\n",
    )
    records = read_records(path)
    assert lines_of(records) == [2, 3, 8]
    assert fields_of(records) == [{"text": "one"}, {"text": "two", "label": 2}, {"text": "three"}]


def test_json_array_elements_sharing_a_line_all_get_that_line(tmp_path):
    path = write(tmp_path, "d.json", '[{"a": 1}, {"a": 2},\n{"a": 3}]')
    records = read_records(path)
    assert lines_of(records) == [1, 1, 2]
    assert [r.fields["a"] for r in records] == [1, 2, 3]


def test_json_array_may_follow_leading_blank_lines(tmp_path):
    path = write(tmp_path, "d.json", '\n\n  [\n{"a": 1}]\n')
    assert lines_of(read_records(path)) == [4]


def test_json_file_holding_json_lines_reads_like_jsonl(tmp_path):
    path = write(tmp_path, "d.json", '{"a": 1}\n\n{"a": 2}\n')
    records = read_records(path)
    assert lines_of(records) == [1, 3]
    assert fields_of(records) == [{"a": 1}, {"a": 2}]


def test_marc_original_json_file_is_json_lines_with_string_stars(marc):
    path = marc / "fixtures" / "dataset_en_train.json"
    records = read_records(path)
    assert lines_of(records) == [1, 2, 3, 4, 5]
    assert all(r.file == str(path) and not r.bad_utf8 for r in records)
    first = records[0].fields
    assert set(first) == {
        "review_id",
        "product_id",
        "reviewer_id",
        "stars",
        "review_body",
        "review_title",
        "language",
        "product_category",
    }
    assert first["review_id"] == "en_0964290"
    assert first["review_body"].startswith("Arrived broken. Manufacturer defect.")
    assert all(isinstance(r.fields["stars"], str) and r.fields["stars"] in "12345" for r in records)
    assert {r.fields["language"] for r in records} == {"en"}


def test_every_marc_original_fixture_file_reads_five_records(marc):
    files = sorted((marc / "fixtures").glob("dataset_*.json"))
    assert len(files) == 18
    for path in files:
        records = read_records(path)
        assert lines_of(records) == [1, 2, 3, 4, 5], path.name
        language = path.name.split("_")[1]
        assert {r.fields["language"] for r in records} == {language}, path.name


# --- CSV and TSV --------------------------------------------------------------------------------


def test_csv_rows_are_keyed_by_header_and_numbered_by_physical_line(tmp_path):
    path = write(tmp_path, "d.csv", ' text , label\nhello,1\n\n"a, b",2\n"say ""hi""",3\n')
    records = read_records(path)
    assert lines_of(records) == [2, 4, 5]
    assert fields_of(records) == [
        {"text": "hello", "label": "1"},
        {"text": "a, b", "label": "2"},
        {"text": 'say "hi"', "label": "3"},
    ]


def test_csv_quoted_field_with_embedded_newlines_starts_at_its_first_line(tmp_path):
    path = write(
        tmp_path,
        "d.csv",
        'text,label\nplain,1\n"first line\nsecond line\n\nfourth line",2\nafter,3\n',
    )
    records = read_records(path)
    assert lines_of(records) == [2, 3, 7]
    assert records[1].fields == {"text": "first line\nsecond line\n\nfourth line", "label": "2"}
    assert records[2].fields == {"text": "after", "label": "3"}


def test_csv_with_crlf_line_ends_numbers_lines_and_keeps_embedded_crlf(tmp_path):
    path = write(tmp_path, "d.csv", 'text,label\r\n"a\r\nb",1\r\nc,2\r\n')
    records = read_records(path)
    assert lines_of(records) == [2, 4]
    assert fields_of(records) == [{"text": "a\r\nb", "label": "1"}, {"text": "c", "label": "2"}]


def test_tsv_splits_on_tabs_not_commas(tmp_path):
    path = write(tmp_path, "d.tsv", "text\tlabel\nhello, world\t1\n\nbye\t2\n")
    records = read_records(path)
    assert lines_of(records) == [2, 4]
    assert fields_of(records) == [
        {"text": "hello, world", "label": "1"},
        {"text": "bye", "label": "2"},
    ]


def test_marc_train_csv_reads_all_12465_rows(marc):
    path = marc / "en" / "train.csv"
    records = read_records(path)
    assert len(records) == 12465
    assert records[0].line == 2 and records[-1].line == 12466
    assert lines_of(records) == list(range(2, 12467))  # no multi-line fields in this slice
    assert all(list(r.fields) == ["row_index", "review_body", "stars"] for r in records)
    assert {r.fields["stars"] for r in records} == {"1", "2", "3", "4", "5"}
    assert records[0].fields["row_index"] == "6"
    assert records[0].fields["review_body"] == (
        "Ordered 2 they shipped 1 promised by certain day, then the next day, then the next day."
    )
    assert not any(r.bad_utf8 for r in records)
    assert not any(v.endswith("\r") for r in records for v in r.fields.values())


def test_marc_test_csv_reads_all_5000_rows(marc):
    records = read_records(marc / "en" / "test.csv")
    assert len(records) == 5000
    assert lines_of(records) == list(range(2, 5002))
    assert {r.fields["stars"] for r in records} == {"1", "2", "3", "4", "5"}
    assert all(r.fields["review_body"] for r in records)


# --- Parquet, xlsx, txt -------------------------------------------------------------------------


def test_parquet_rows_are_numbered_from_1_and_keep_their_types(tmp_path):
    path = write(
        tmp_path,
        "d.parquet",
        parquet_bytes({"text": ["a", "b", "c"], "stars": [5, None, 3], "score": [0.5, 1.0, 2.5]}),
    )
    records = read_records(path)
    assert lines_of(records) == [1, 2, 3]
    assert fields_of(records) == [
        {"text": "a", "stars": 5, "score": 0.5},
        {"text": "b", "stars": None, "score": 1.0},
        {"text": "c", "stars": 3, "score": 2.5},
    ]


def test_xlsx_line_is_the_sheet_row_with_the_header_in_row_1(tmp_path):
    path = write(
        tmp_path,
        "d.xlsx",
        xlsx_bytes(
            [["text", "stars"], ["good", 5], [None, None], ["bad", 1.5], ["yes", True]],
            cells={"A8": "late"},
        ),
    )
    records = read_records(path)
    assert lines_of(records) == [2, 4, 5, 8]
    assert fields_of(records) == [
        {"text": "good", "stars": 5},
        {"text": "bad", "stars": 1.5},
        {"text": "yes", "stars": True},
        {"text": "late", "stars": None},
    ]


def test_xlsx_reads_only_the_first_sheet(tmp_path):
    path = write(
        tmp_path,
        "d.xlsx",
        xlsx_bytes([["text"], ["first"]], extra_sheet=[["text"], ["second"], ["more"]]),
    )
    assert fields_of(read_records(path)) == [{"text": "first"}]


def test_txt_has_one_example_per_line_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, "d.txt", "first line\r\n\n   \n  indented stays\nlast without newline")
    records = read_records(path)
    assert lines_of(records) == [1, 4, 5]
    assert fields_of(records) == [
        {"text": "first line"},
        {"text": "  indented stays"},
        {"text": "last without newline"},
    ]


# --- gzip and BOM -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_gzip_compressed_text_formats_read_like_the_plain_file(tmp_path, fmt):
    plain = read_records(write(tmp_path, f"d.{fmt}", SAMPLES[fmt]))
    packed_path = write(tmp_path, f"d.{fmt}.gz", gzip.compress(SAMPLES[fmt]))
    packed = read_records(packed_path)
    assert lines_of(packed) == lines_of(plain) == SAMPLE_LINES[fmt]
    assert fields_of(packed) == fields_of(plain)
    assert all(r.file == str(packed_path) for r in packed)


def test_gzip_compressed_marc_style_json_lines_reads(tmp_path, marc):
    data = (marc / "fixtures" / "dataset_en_train.json").read_bytes()
    records = read_records(write(tmp_path, "dataset_en_train.json.gz", gzip.compress(data)))
    assert lines_of(records) == [1, 2, 3, 4, 5]


def test_gzip_compressed_parquet_reads(tmp_path):
    data = parquet_bytes({"text": ["a", "b"]})
    records = read_records(write(tmp_path, "d.parquet.gz", gzip.compress(data)))
    assert lines_of(records) == [1, 2]
    assert fields_of(records) == [{"text": "a"}, {"text": "b"}]


def test_gzip_compressed_xlsx_reads(tmp_path):
    data = xlsx_bytes([["text"], ["a"], ["b"]])
    records = read_records(write(tmp_path, "d.XLSX.GZ", gzip.compress(data)))
    assert lines_of(records) == [2, 3]
    assert fields_of(records) == [{"text": "a"}, {"text": "b"}]


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_utf8_bom_is_accepted_and_not_part_of_the_first_field(tmp_path, fmt):
    records = read_records(write(tmp_path, f"d.{fmt}", b"\xef\xbb\xbf" + SAMPLES[fmt]))
    assert lines_of(records) == SAMPLE_LINES[fmt]
    assert "text" in records[0].fields
    assert not any("\ufeff" in str(k) + str(v) for r in records for k, v in r.fields.items())


def test_utf8_bom_inside_gzip_is_accepted(tmp_path):
    path = write(tmp_path, "d.csv.gz", gzip.compress(b"\xef\xbb\xbftext\nhi\n"))
    assert fields_of(read_records(path)) == [{"text": "hi"}]


# --- Unreadable files ---------------------------------------------------------------------------


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    error = read_error(path)
    assert str(error) == f"{path}: file not found"
    assert isinstance(error, TrimtabError) and error.exit_code == 2


def test_directory_is_not_a_data_file(tmp_path):
    folder = tmp_path / "data.csv"
    folder.mkdir()
    assert str(read_error(folder)) == f"{folder}: is a directory, not a data file"


def test_unsupported_extension_is_rejected_before_reading(tmp_path):
    path = tmp_path / "data.xls"  # does not even exist: the name alone is enough
    error = read_error(path)
    assert str(error).startswith(f"{path}: unsupported file type '.xls'")


@pytest.mark.parametrize(
    "name", ["d.jsonl", "d.json", "d.csv", "d.tsv", "d.txt", "d.parquet", "d.xlsx"]
)
@pytest.mark.parametrize("content", [b"", b"  \n\r\n\t \n"], ids=["0-bytes", "whitespace"])
def test_empty_file_says_so_and_names_the_file(tmp_path, name, content):
    path = write(tmp_path, name, content)
    assert str(read_error(path)) == f"{path}: file is empty"


def test_empty_gzip_content_is_an_empty_file(tmp_path):
    path = write(tmp_path, "d.jsonl.gz", gzip.compress(b"\n\n"))
    assert str(read_error(path)) == f"{path}: file is empty"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("header-only.csv", "text,label\n"),
        ("header-and-blank-lines.tsv", "text\tlabel\n\n\n"),
        ("empty-array.json", "[]"),
        ("empty-array-spaced.json", "\n[ \n ]\n"),
        ("bom-only.jsonl", "\ufeff\n"),
    ],
)
def test_file_without_records_is_an_error_naming_the_file(tmp_path, name, content):
    path = write(tmp_path, name, content)
    assert str(read_error(path)) == f"{path}: no examples found in the file"


def test_xlsx_with_only_a_header_row_has_no_examples(tmp_path):
    path = write(tmp_path, "d.xlsx", xlsx_bytes([["text", "label"]]))
    assert str(read_error(path)) == f"{path}: no examples found in the file"


def test_parquet_with_zero_rows_has_no_examples(tmp_path):
    import pyarrow as pa

    path = write(tmp_path, "d.parquet", parquet_bytes({"text": pa.array([], pa.string())}))
    assert str(read_error(path)) == f"{path}: no examples found in the file"


# --- JSON errors --------------------------------------------------------------------------------


def test_invalid_json_line_is_reported_with_file_and_line(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"a": 1}\n\n{"a": 2,}\n{"a": 3}\n')
    error = read_error(path)
    assert len(error.problems) == 1
    problem = error.problems[0]
    assert (problem.file, problem.line) == (str(path), 3)
    assert str(error).startswith(f"{path}:3: invalid JSON: ")
    assert "column" in str(error)


def test_json_lines_are_read_as_json_loads_reads_each_line(tmp_path):
    # CRLF ends, white space around a value, a BOM-less UTF-8 value: what json.loads accepts
    path = write(tmp_path, "d.jsonl", '{"a": 1}\r\n  {"a": 2}  \n\t{"a": "\u00e9"}\n')
    assert fields_of(read_records(path)) == [{"a": 1}, {"a": 2}, {"a": "é"}]
    assert lines_of(read_records(path)) == [1, 2, 3]


@pytest.mark.parametrize(
    "line", ['{"a": 1} {"b": 2}', '{"a": 1}\x0b', '{"a": 1}]', '\ufeff{"a": 1}', "{'a': 1}"]
)
def test_json_lines_errors_are_json_loads_own_messages(tmp_path, line):
    path = write(tmp_path, "d.jsonl", '{"ok": 1}\n' + line + "\n")
    with pytest.raises(json.JSONDecodeError) as info:
        json.loads(line)
    error = read_error(path)
    assert [str(p) for p in error.problems] == [
        f"{path}:2: invalid JSON: {info.value.msg} (column {info.value.colno})"
    ]


def test_read_file_gives_the_sha256_of_the_file_as_stored(tmp_path):
    import hashlib

    from trimtab.data.readers import read_file

    plain = write(tmp_path, "d.jsonl", '{"a": 1}\n')
    packed = write(tmp_path, "p.jsonl.gz", gzip.compress(b'{"a": 1}\n'))
    for path in (plain, packed):
        records, digest = read_file(path)
        assert fields_of(records) == [{"a": 1}]
        assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_json_lines_line_that_is_not_an_object_is_reported(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"a": 1}\n[1, 2]\n"text"\n')
    error = read_error(path)
    assert [str(p) for p in error.problems] == [
        f"{path}:2: expected a JSON object, got an array",
        f"{path}:3: expected a JSON object, got a string",
    ]


def test_pretty_printed_single_object_in_json_file_says_the_shape_is_unsupported(tmp_path):
    path = write(tmp_path, "d.json", '{\n  "a": 1\n}\n')
    error = read_error(path)
    assert [str(p) for p in error.problems] == [
        f"{path}:1: holds a single JSON object; expected an array of objects or one object "
        "per line (JSON Lines)"
    ]


def test_json_array_element_that_is_not_an_object_names_its_line(tmp_path):
    path = write(tmp_path, "d.json", '[\n{"a": 1},\n42,\n{"a": 2},\nnull\n]\n')
    error = read_error(path)
    assert [str(p) for p in error.problems] == [
        f"{path}:3: expected a JSON object in the array, got a number",
        f"{path}:5: expected a JSON object in the array, got null",
    ]


def test_invalid_json_inside_an_array_names_the_line_of_the_error(tmp_path):
    path = write(tmp_path, "d.json", '[\n{"a": 1},\n{"a":\n  oops}\n]\n')
    error = read_error(path)
    assert error.problems[0].line == 4
    assert str(error).startswith(f"{path}:4: invalid JSON: ")


def test_trailing_garbage_after_a_json_array_names_its_line(tmp_path):
    path = write(tmp_path, "d.json", '[{"a": 1}]\n\n{"a": 2}\n')
    error = read_error(path)
    assert str(error) == f"{path}:3: unexpected content after the JSON array"


def test_json_array_missing_its_comma_is_reported(tmp_path):
    path = write(tmp_path, "d.json", '[{"a": 1}\n {"a": 2}]\n')
    error = read_error(path)
    assert str(error) == f"{path}:2: invalid JSON: expected ',' or ']' after an array element"


def test_unterminated_json_array_is_reported(tmp_path):
    path = write(tmp_path, "d.json", '[{"a": 1},\n{"a": 2}')
    error = read_error(path)
    assert error.problems[0].file == str(path)
    assert "expected ',' or ']'" in str(error)


def test_trailing_comma_in_json_array_is_reported(tmp_path):
    path = write(tmp_path, "d.json", '[{"a": 1},\n]\n')
    error = read_error(path)
    assert error.problems[0].line == 2
    assert "invalid JSON" in str(error)


def test_many_bad_lines_are_reported_together_up_to_20_then_counted(tmp_path):
    lines = ['{"a": 1}'] + ["not json"] * 25 + ['{"a": 2}']
    path = write(tmp_path, "d.jsonl", "\n".join(lines) + "\n")
    error = read_error(path)
    assert len(error.problems) == MAX_PROBLEMS == 20
    assert [p.line for p in error.problems] == list(range(2, 22))
    assert error.more == 5
    message = str(error).splitlines()
    assert len(message) == 21
    assert message[0].startswith(f"{path}:2: invalid JSON")
    assert message[-1] == "... and 5 more problem(s) of the same kind"


def test_exactly_20_bad_lines_are_all_listed_without_a_summary(tmp_path):
    path = write(tmp_path, "d.jsonl", "[]\n" * 20)
    error = read_error(path)
    assert len(error.problems) == 20 and error.more == 0
    assert "more problem" not in str(error)


# --- CSV/TSV errors -----------------------------------------------------------------------------


def test_csv_error_names_file_and_line_of_the_short_row(tmp_path):
    path = write(tmp_path, "d.csv", 'text,label\n"multi\nline",1\nshort\nok,2\n')
    assert str(read_error(path)) == f"{path}:4: 1 fields, but the header has 2"


def test_csv_rows_with_the_wrong_width_are_all_reported_together(tmp_path):
    rows = ["a,b"] + ["1,2,3"] * 22 + ["x"]
    path = write(tmp_path, "d.csv", "\n".join(rows) + "\n")
    error = read_error(path)
    assert [p.line for p in error.problems] == list(range(2, 22))
    assert error.problems[0].message == "3 fields, but the header has 2"
    assert error.more == 3
    assert str(error).endswith("... and 3 more problem(s) of the same kind")


def test_csv_unterminated_quote_names_the_line_where_the_record_starts(tmp_path):
    path = write(tmp_path, "d.csv", 'text,label\nok,1\n"never closed,2\nmore,3\n')
    error = read_error(path)
    assert error.problems[0].line == 3
    assert str(error).startswith(f"{path}:3: malformed CSV: ")


def test_tsv_malformed_quote_says_tsv(tmp_path):
    path = write(tmp_path, "d.tsv", 'text\tlabel\n"quoted" then more\t1\n')
    error = read_error(path)
    assert str(error).startswith(f"{path}:2: malformed TSV: ")


def test_csv_header_with_an_unterminated_quote_is_malformed(tmp_path):
    path = write(tmp_path, "d.csv", '"text,label\n1,2\n')
    assert str(read_error(path)).startswith(f"{path}:1: malformed header: ")


def test_csv_duplicate_header_column_is_reported_on_line_1(tmp_path):
    path = write(tmp_path, "d.csv", "text,label, text\na,b,c\n")
    error = read_error(path)
    assert str(error) == f"{path}:1: column 'text' appears twice in the header"


def test_csv_empty_header_column_is_reported_on_line_1(tmp_path):
    path = write(tmp_path, "d.csv", "text,,label\na,b,c\n")
    assert str(read_error(path)) == f"{path}:1: empty column name in the header"


def test_tsv_duplicate_and_empty_header_columns_are_reported_together(tmp_path):
    path = write(tmp_path, "d.tsv", "a\t\tb\ta\nx\ty\tz\tw\n")
    error = read_error(path)
    assert [str(p) for p in error.problems] == [
        f"{path}:1: empty column name in the header",
        f"{path}:1: column 'a' appears twice in the header",
    ]


def test_csv_whose_first_line_names_no_column_needs_a_header(tmp_path):
    path = write(tmp_path, "d.csv", " , \n1,2\n")
    assert str(read_error(path)) == (
        f"{path}:1: the first line must be a header naming the columns"
    )


# --- Encoding and binary errors -----------------------------------------------------------------


def test_binary_file_with_nul_bytes_is_rejected(tmp_path):
    path = write(tmp_path, "d.csv", b"text,label\nab\x00cd,1\n")
    assert str(read_error(path)) == (f"{path}: file is binary, not text (it contains NUL bytes)")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_file_is_rejected_with_a_hint_to_save_as_utf8(tmp_path, encoding):
    text = '{"text": "hello"}\n'
    bom = {"utf-16": b"", "utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}[encoding]
    path = write(tmp_path, "d.jsonl", bom + text.encode(encoding))
    assert str(read_error(path)) == f"{path}: file is UTF-16 encoded; save it as UTF-8"


def test_utf16_without_bom_is_rejected_as_binary(tmp_path):
    path = write(tmp_path, "d.txt", "hello\nworld\n".encode("utf-16-le"))
    assert "binary" in str(read_error(path))


def test_mostly_undecodable_file_is_not_utf8_and_names_the_first_bad_line(tmp_path):
    latin1 = "text,label\nok,1\ncafé,2\nnaïve,3\nrésumé,4\n".encode("latin-1")
    path = write(tmp_path, "d.csv", latin1)
    error = read_error(path)
    assert error.problems[0].line == 3
    assert str(error) == (
        f"{path}:3: file is not UTF-8 text (3 of 5 lines fail to decode); convert it to UTF-8"
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("not-gzip.jsonl.gz", b'{"a": 1}\n'),
        ("bad-method.csv.gz", b"\x1f\x8b not really gzip"),
        ("truncated.txt.gz", gzip.compress(b"hello\nworld\n" * 50)[:-12]),
    ],
)
def test_corrupt_gzip_is_reported(tmp_path, name, content):
    path = write(tmp_path, name, content)
    assert str(read_error(path)).startswith(f"{path}: not a valid gzip file: ")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "fake-magic"])
def test_corrupt_parquet_is_reported(tmp_path, damage):
    good = parquet_bytes({"text": ["a", "b"]})
    content = {
        "garbage": b"this is not parquet at all",
        "truncated": good[: len(good) // 2],
        "fake-magic": b"PAR1" + b"x" * 20 + b"PAR1",
    }[damage]
    path = write(tmp_path, "d.parquet", content)
    assert str(read_error(path)).startswith(f"{path}: not a valid Parquet file: ")


def _zip_without_workbook() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "hi")
    return buffer.getvalue()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "zip-without-workbook"])
def test_corrupt_xlsx_is_reported(tmp_path, damage):
    good = xlsx_bytes([["text"], ["a"]])
    content = {
        "garbage": b"not a workbook",
        "truncated": good[: len(good) // 2],
        "zip-without-workbook": _zip_without_workbook(),
    }[damage]
    path = write(tmp_path, "d.xlsx", content)
    assert str(read_error(path)).startswith(f"{path}: not a valid .xlsx workbook: ")


def _xlsx_with_damaged_member(member: str) -> bytes:
    good = zipfile.ZipFile(io.BytesIO(xlsx_bytes([["text"], ["a"]])))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info in good.infolist():
            data = good.read(info.filename)
            archive.writestr(info, data[: len(data) // 2] if info.filename == member else data)
    return buffer.getvalue()


@pytest.mark.parametrize("member", ["xl/workbook.xml", "xl/worksheets/sheet1.xml"])
def test_xlsx_with_corrupt_xml_inside_is_a_data_error(tmp_path, member):
    path = write(tmp_path, "d.xlsx", _xlsx_with_damaged_member(member))
    assert str(read_error(path)).startswith(f"{path}: not a valid .xlsx workbook: ")


def test_xlsx_whose_first_row_is_empty_needs_a_header(tmp_path):
    path = write(tmp_path, "d.xlsx", xlsx_bytes([], cells={"A3": "text", "A4": "a"}))
    assert str(read_error(path)) == (f"{path}:1: the first row must be a header naming the columns")


def test_xlsx_duplicate_header_column_is_reported_not_silently_dropped(tmp_path):
    path = write(tmp_path, "d.xlsx", xlsx_bytes([["text", "text"], ["kept?", "lost?"]]))
    error = read_error(path)
    assert "appears twice" in str(error) and error.problems[0].line == 1


# --- Invalid UTF-8 in single lines --------------------------------------------------------------


def test_jsonl_line_with_invalid_utf8_is_flagged_and_decoded_with_replacement(tmp_path):
    path = write(
        tmp_path, "d.jsonl", b'{"text": "ok"}\n{"text": "bad \xff\xfe byte"}\n{"text": "fine"}\n'
    )
    records = read_records(path)
    assert [r.bad_utf8 for r in records] == [False, True, False]
    assert records[1].line == 2
    assert records[1].fields["text"] == f"bad {FFFD}{FFFD} byte"
    assert records[2].fields["text"] == "fine"


def test_csv_row_with_invalid_utf8_is_flagged(tmp_path):
    path = write(tmp_path, "d.csv", b"text,label\nok,1\nbad \xc3,2\nfine,3\nalso,4\n")
    records = read_records(path)
    assert [(r.line, r.bad_utf8) for r in records] == [
        (2, False),
        (3, True),
        (4, False),
        (5, False),
    ]
    assert records[1].fields == {"text": f"bad {FFFD}", "label": "2"}


def test_multi_line_csv_record_touching_a_bad_line_is_flagged(tmp_path):
    path = write(
        tmp_path,
        "d.csv",
        b'text,label\n"starts fine\nthen \xff breaks\nends fine",1\nnext,2\nlast,3\n',
    )
    records = read_records(path)
    assert [(r.line, r.bad_utf8) for r in records] == [(2, True), (5, False), (6, False)]
    assert records[0].fields["text"] == f"starts fine\nthen {FFFD} breaks\nends fine"


def test_txt_line_with_invalid_utf8_is_flagged(tmp_path):
    path = write(tmp_path, "d.txt", b"one\n\ntw\xe9o\nthree\n")
    records = read_records(path)
    assert [(r.line, r.bad_utf8) for r in records] == [(1, False), (3, True), (4, False)]
    assert records[1].fields["text"] == f"tw{FFFD}o"


def test_gzip_jsonl_line_with_invalid_utf8_is_flagged(tmp_path):
    path = write(
        tmp_path,
        "d.jsonl.gz",
        gzip.compress(b'{"t": "a"}\n{"t": "\xff"}\n{"t": "b"}\n{"t": "c"}\n'),
    )
    assert [r.bad_utf8 for r in read_records(path)] == [False, True, False, False]


def test_json_array_element_starting_on_a_bad_line_is_flagged(tmp_path):
    path = write(tmp_path, "d.json", b'[\n{"t": "\xff"},\n{"t": "b"},\n{"t": "c"}\n]\n')
    assert [(r.line, r.bad_utf8) for r in read_records(path)] == [(2, True), (3, False), (4, False)]


def test_json_array_element_spanning_a_bad_line_is_flagged(tmp_path):
    path = write(
        tmp_path,
        "d.json",
        b'[\n{"t": "a"},\n{"t":\n  "bad \xff"},\n{"t": "b"},\n{"t": "c"},\n{"t": "d"}\n]\n',
    )
    records = read_records(path)
    assert records[1].fields["t"] == f"bad {FFFD}"
    assert records[1].bad_utf8


# --- Unicode line separators (str.splitlines is broader than a file's line ends) ----------------


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_jsonl_written_by_trimtab_reads_back_when_text_holds_unicode_line_separators(
    tmp_path, separator
):
    rows = [{"text": f"before{separator}after"}, {"text": "next"}]
    path = write(tmp_path, "d.jsonl", jsonl(rows))
    records = read_records(path)
    assert fields_of(records) == rows
    assert lines_of(records) == [1, 2]


@pytest.mark.parametrize("separator", ["\x0c", "\u2028", "\x85"])
def test_csv_line_numbers_ignore_unicode_line_separators_inside_fields(tmp_path, separator):
    path = write(tmp_path, "d.csv", f'text,label\n"a{separator}b",1\nnext,2\n')
    records = read_records(path)
    assert records[0].fields["text"] == f"a{separator}b"
    assert lines_of(records) == [2, 3]
