"""Reading a customer spreadsheet: columns, line numbers, and why a row is rejected."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from core.cli import _ProgressBar
from crm_link.importer import ImportFileError, parse_row, read_rows


@pytest.mark.parametrize(
    ("cells", "reason"),
    [
        ({"phone": "5551234"}, "missing name"),
        ({"name": "A", "phone": "555 1234; 12ab"}, "bad phone '12ab'"),
        ({"name": "A"}, "no account number and no phone (nothing to match it by)"),
        ({"name": "A", "account_number": "1", "vip": "maybe"}, "bad vip value 'maybe' (yes/no)"),
        ({"name": "A", "account_number": "1", "email": "a@b"}, "bad email 'a@b'"),
        ({"name": "A", "account_number": "1", "language": "english"}, "bad language 'english'"),
        ({"name": "A" * 256, "account_number": "1"}, "name longer than 255 characters"),
    ],
)
def test_rows_are_rejected_with_a_reason(cells: dict[str, str], reason: str) -> None:
    result = parse_row(7, cells, "US")
    assert isinstance(result, str) and result.startswith(reason)


def test_a_valid_row_keeps_what_was_written_and_normalises_numbers() -> None:
    row = parse_row(3, {"name": " Ana ", "phone": "+351 21 123 4567, 21 123 4567",
                        "vip": "Y", "tags": "a; b", "language": "pt-BR"}, "PT")  # fmt: skip
    assert not isinstance(row, str)
    assert row.phones == (("+351 21 123 4567", "+351211234567"),)  # the same number once
    assert (row.name, row.vip, row.tags, row.tier) == ("Ana", True, ("a", "b"), "")


def test_line_numbers_count_physical_lines_and_columns_are_matched_loosely(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.csv"
    path.write_text(
        "\ufeffNAME\tPhone Numbers\tAccount\tNotes\n"
        'A\t5551234\t1\t"two\nlines"\n'
        "\n"
        "B\t5555678\t2\tx\n",
        encoding="utf-8",
    )
    rows, ignored = read_rows(path)
    assert ignored == ["Notes"]
    assert rows == [
        (2, {"name": "A", "phone": "5551234", "account_number": "1"}),
        (5, {"name": "B", "phone": "5555678", "account_number": "2"}),
    ]
    (tmp_path / "x.csv").write_text("company\nAcme\n")
    with pytest.raises(ImportFileError, match="no 'name' column"):
        read_rows(tmp_path / "x.csv")


def test_the_progress_bar_redraws_on_a_terminal_and_prints_tenths_elsewhere() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = _ProgressBar(tty, width=10)
    bar.update(5, 10)
    bar.update(10, 10)
    bar.done()
    assert tty.getvalue() == "\r[#####.....] 5/10\r[##########] 10/10\n"
    pipe = io.StringIO()
    bar = _ProgressBar(pipe)
    for done in range(1, 1001):
        bar.update(done, 1000)
    lines = pipe.getvalue().splitlines()
    assert lines[0] == "imported 1/1000 rows (0%)"  # it started
    assert len(lines) == 11 and lines[-1] == "imported 1000/1000 rows (100%)"
