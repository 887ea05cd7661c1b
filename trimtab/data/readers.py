"""Read labelled or raw data files into records that remember where they came from.

Supported: ``.jsonl``, ``.json`` (an array, or JSON Lines under a ``.json`` name, such as the MARC
originals), ``.csv``, ``.tsv``, ``.parquet``, ``.xlsx`` and ``.txt`` (one example per line), each
optionally gzip-compressed (``.gz``). Every record carries its file and 1-based line (or sheet/table
row) so that later errors and checks can point at it.

A file that cannot be read at all (missing, empty, binary, not UTF-8, malformed) raises
:class:`~trimtab.errors.DataError`. A *line* with invalid UTF-8 is not fatal: it is decoded with
replacement characters and flagged, so the ``invalid-utf8`` check can report and drop it.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import hashlib
import io
import json
import json.scanner
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimtab.errors import DataError, Problem, ProblemList

FORMATS = ("jsonl", "json", "csv", "tsv", "parquet", "xlsx", "txt")

# Line-oriented decoding is expensive for huge CSV fields; Python's default limit is 128 KiB.
csv.field_size_limit(1 << 28)

# One JSON value from a position, in C: (value, end). (typeshed types the argument wrongly.)
_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_JSON_SPACE = " \t\n\r"  # the white space JSON allows around a value


@dataclass(slots=True)
class Record:
    """One row of an input file: its fields and where it was read from."""

    file: str
    line: int
    fields: dict[str, Any]
    bad_utf8: bool = False

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def detect_format(path: Path) -> tuple[str, bool]:
    """Return ``(format, gzipped)`` from the file name, e.g. ``data.csv.gz`` → ``("csv", True)``."""
    suffixes = [s.lower() for s in path.suffixes]
    gzipped = bool(suffixes) and suffixes[-1] == ".gz"
    if gzipped:
        suffixes = suffixes[:-1]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    if ext not in FORMATS:
        raise DataError(
            Problem(
                f"unsupported file type '{''.join(path.suffixes) or '(none)'}'; expected one of "
                + ", ".join(f".{f}" for f in FORMATS)
                + " (optionally .gz)",
                file=str(path),
            )
        )
    return ext, gzipped


def read_records(path: str | Path) -> list[Record]:
    """Read every record of one input file, raising DataError on anything unreadable."""
    return read_file(path)[0]


def read_file(path: str | Path) -> tuple[list[Record], str]:
    """Every record of one input file and the SHA-256 of its bytes (read once for both)."""
    path = Path(path)
    name = str(path)
    fmt, gzipped = detect_format(path)
    data, digest = _read_bytes(path, gzipped)
    if fmt == "parquet":
        records = _read_parquet(data, name)
    elif fmt == "xlsx":
        records = _read_xlsx(data, name)
    elif fmt == "jsonl":  # one value per line: the lines need no line ends
        records = _read_json_lines(*_decode_lines(data, name, ends=False), name)
    else:
        lines, bad = _decode_lines(data, name)
        if fmt == "txt":
            records = _read_txt(lines, bad, name)
        elif fmt in ("csv", "tsv"):
            records = _read_delimited(lines, bad, name, "," if fmt == "csv" else "\t")
        elif fmt == "json" and _first_char(lines) == "[":
            records = _read_json_array(lines, bad, name)
        elif fmt == "json" and len(lines) > 1 and _is_one_object(lines):
            raise DataError(
                Problem(
                    "holds a single JSON object; expected an array of objects "
                    "or one object per line (JSON Lines)",
                    file=name,
                    line=1,
                )
            )
        else:
            records = _read_json_lines(lines, bad, name)
    if not records:
        raise DataError(Problem("no examples found in the file", file=name))
    return records, digest


def _read_bytes(path: Path, gzipped: bool) -> tuple[bytes, str]:
    """The file's contents (uncompressed) and the SHA-256 of its bytes as stored."""
    name = str(path)
    if not path.exists():
        raise DataError(Problem("file not found", file=name))
    if path.is_dir():
        raise DataError(Problem("is a directory, not a data file", file=name))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(Problem(f"cannot read: {e.strerror or e}", file=name)) from e
    digest = hashlib.sha256(data).hexdigest()
    if gzipped:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(Problem(f"not a valid gzip file: {e}", file=name)) from e
    if not data.strip():
        raise DataError(Problem("file is empty", file=name))
    return data, digest


def _decode_lines(data: bytes, name: str, ends: bool = True) -> tuple[list[str], set[int]]:
    """Split into lines (keeping line ends unless ``ends`` is False) and decode each; return
    lines and bad line numbers."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(Problem("file is UTF-16 encoded; save it as UTF-8", file=name))
    if b"\x00" in data[:8192]:
        raise DataError(Problem("file is binary, not text (it contains NUL bytes)", file=name))
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:  # fast path: the whole file is valid UTF-8
        return _split_lines(data.decode("utf-8"), ends), set()
    except UnicodeDecodeError:
        pass
    lines: list[str] = []
    bad: set[int] = set()
    for number, raw in enumerate(_split_lines(data, ends), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(raw.decode("utf-8", errors="replace"))
            bad.add(number)
    if len(bad) * 2 > len(lines):
        raise DataError(
            Problem(
                f"file is not UTF-8 text ({len(bad)} of {len(lines)} lines fail to decode); "
                "convert it to UTF-8",
                file=name,
                line=min(bad),
            )
        )
    return lines, bad


def _split_lines(text, ends: bool = True):
    """Split after each ``\n`` only, keeping it unless ``ends`` is False: str.splitlines would
    also break on U+2028, form feeds and other characters that JSON and CSV carry in a line."""
    newline = "\n" if isinstance(text, str) else b"\n"
    parts = text.split(newline)
    if not ends:
        return parts if parts[-1] else parts[:-1]
    lines = [part + newline for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _first_char(lines: list[str]) -> str:
    for line in lines:
        stripped = line.strip()
        if stripped:
            return stripped[0]
    return ""


def _is_one_object(lines: list[str]) -> bool:
    try:
        return isinstance(json.loads("".join(lines)), dict)
    except json.JSONDecodeError:
        return False


def _read_json_lines(lines: list[str], bad: set[int], name: str) -> list[Record]:
    records: list[Record] = []
    problems = ProblemList()
    scan, loads = _SCAN, json.loads
    for number, line in enumerate(lines, start=1):
        if not line or line.isspace():
            continue
        try:  # the C scanner alone; json.loads for anything else, and for its messages
            value, end = scan(line, 0)
            if end != len(line) and line[end:].strip(_JSON_SPACE):
                raise ValueError("extra data")
        except (StopIteration, ValueError):
            try:
                value = loads(line)
            except json.JSONDecodeError as e:
                problems.add(
                    Problem(f"invalid JSON: {e.msg} (column {e.colno})", file=name, line=number)
                )
                continue
        if not isinstance(value, dict):
            problems.add(
                Problem(f"expected a JSON object, got {_json_type(value)}", file=name, line=number)
            )
            continue
        records.append(Record(name, number, value, number in bad))
    problems.raise_if_any()
    return records


def _read_json_array(lines: list[str], bad: set[int], name: str) -> list[Record]:
    """Parse a JSON array element by element so each element keeps its starting line number."""
    text = "".join(lines)
    line_starts = [0]
    for line in lines:
        line_starts.append(line_starts[-1] + len(line))
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    records: list[Record] = []
    problems = ProblemList()

    def line_of(offset: int) -> int:
        return bisect.bisect_right(line_starts, offset)

    def skip_ws(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    pos = skip_ws(pos)
    if pos < len(text) and text[pos] == "]":
        return records
    while True:
        pos = skip_ws(pos)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(Problem(f"invalid JSON: {e.msg}", file=name, line=e.lineno)) from e
        number = line_of(pos)
        if isinstance(value, dict):
            is_bad = bool(bad) and any(n in bad for n in range(number, line_of(end - 1) + 1))
            records.append(Record(name, number, value, is_bad))
        else:
            problems.add(
                Problem(
                    f"expected a JSON object in the array, got {_json_type(value)}",
                    file=name,
                    line=number,
                )
            )
        pos = skip_ws(end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            if skip_ws(pos + 1) != len(text):
                raise DataError(
                    Problem(
                        "unexpected content after the JSON array",
                        file=name,
                        line=line_of(skip_ws(pos + 1)),
                    )
                )
            break
        raise DataError(
            Problem(
                "invalid JSON: expected ',' or ']' after an array element",
                file=name,
                line=line_of(pos),
            )
        )
    problems.raise_if_any()
    return records


def _read_delimited(lines: list[str], bad: set[int], name: str, delimiter: str) -> list[Record]:
    reader = csv.reader(iter(lines), delimiter=delimiter, strict=True)
    problems = ProblemList()
    try:
        header = next(reader)
    except csv.Error as e:
        raise DataError(Problem(f"malformed header: {e}", file=name, line=1)) from e
    header = [h.strip() for h in header]
    if not any(header):
        raise DataError(
            Problem("the first line must be a header naming the columns", file=name, line=1)
        )
    seen: set[str] = set()
    for column in header:
        if not column:
            problems.add(Problem("empty column name in the header", file=name, line=1))
        elif column in seen:
            problems.add(
                Problem(f"column '{column}' appears twice in the header", file=name, line=1)
            )
        seen.add(column)
    problems.raise_if_any()
    records: list[Record] = []
    width = len(header)
    end = reader.line_num
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(
                Problem(
                    f"malformed {'CSV' if delimiter == ',' else 'TSV'}: {e}", file=name, line=start
                )
            ) from e
        end = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != width:
            problems.add(
                Problem(f"{len(row)} fields, but the header has {width}", file=name, line=start)
            )
            continue
        is_bad = bool(bad) and any(n in bad for n in range(start, end + 1))
        records.append(Record(name, start, dict(zip(header, row)), is_bad))
    problems.raise_if_any()
    return records


def _read_txt(lines: list[str], bad: set[int], name: str) -> list[Record]:
    return [
        Record(name, number, {"text": line.rstrip("\r\n")}, number in bad)
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]


def _read_parquet(data: bytes, name: str) -> list[Record]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pyarrow.ArrowException, OSError) as e:
        raise DataError(Problem(f"not a valid Parquet file: {e}", file=name)) from e
    return [Record(name, number, row) for number, row in enumerate(table.to_pylist(), start=1)]


def _read_xlsx(data: bytes, name: str) -> list[Record]:
    """Read the first sheet; row 1 is the header and line numbers are the sheet's row numbers."""
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        rows: list[tuple[Any, ...]] = list(workbook.worksheets[0].iter_rows(values_only=True))
        workbook.close()
    except Exception as e:  # openpyxl surfaces zip, XML and key errors for a damaged file
        raise DataError(
            Problem(f"not a valid .xlsx workbook: {type(e).__name__}: {e}", file=name)
        ) from e
    if not rows or not any(v is not None for v in rows[0]):
        raise DataError(
            Problem("the first row must be a header naming the columns", file=name, line=1)
        )
    header = [str(v).strip() if v is not None else "" for v in rows[0]]
    problems = ProblemList()
    seen: set[str] = set()
    for column, h in enumerate(header, start=1):
        if h in seen:
            problems.add(Problem(f"column '{h}' appears twice in the header", file=name, line=1))
        elif not h and any(len(r) >= column and r[column - 1] is not None for r in rows[1:]):
            problems.add(
                Problem(
                    f"column {column} holds data but has no name in the header", file=name, line=1
                )
            )
        seen.add(h)
    problems.raise_if_any()
    records: list[Record] = []
    for number, row in enumerate(rows[1:], start=2):
        if all(v is None for v in row):
            continue
        fields = {h: v for h, v in zip(header, row) if h}
        records.append(Record(name, number, fields))
    return records


def _json_type(value: Any) -> str:
    return {
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)
