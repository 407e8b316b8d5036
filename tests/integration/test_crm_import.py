"""`kefu import customers FILE.csv` and `kefu db upgrade` on SQLite and PostgreSQL:
valid rows are added, bad ones reported with their line and reason, and importing the
same file again changes nothing."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from core.cli import main
from crm_link.store import CallStore, head_revision
from tests.support.postgres import db_url, postgres  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

CUSTOMERS = """\ufeffName,Company,Phones,Email,Tier,VIP,Language,Account_Number,Tags,Owner,Fax
Wang Fang,Lotus Trading,+1 555 123 4000; 555-123-4001,wang@lotus.example,gold,yes,zh,A-100,\
"wholesale, tea",alice,
Maria Lopez,Lopez Bakery,(555) 567-8000,,standard,no,en,A-200,,bob,
,Nameless Inc,555-999-0000,,,,,A-300,,,
Kim Min-jun,Hanbit,12ab,,,,,A-400,,,
Kim Again,Hanbit,555-777-0000,,,,,A-100,,,
"Ana ""Ann"" Silva","Silva
Lda",+351 21 123 4567,ana@silva.example,,1,pt-BR,,b2b,,
No Key,,,,,,,,,,
Bad Vip,,555-444-0000,,,maybe,,,,,
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_import_reports_rejected_rows_and_a_second_run_changes_nothing(
    db_url: str,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "customers.csv"
    path.write_text(CUSTOMERS, encoding="utf-8")
    rejects = tmp_path / "rejects.csv"
    argv = ["import", "customers", str(path), "--database", db_url, "--data-dir", str(tmp_path)]

    code, out, err = run(capsys, *argv, "--rejects", str(rejects))
    assert code == 1, out + err
    assert "ignored columns: Fax" in out
    assert "8 rows: 3 added, 0 updated, 0 unchanged, 5 rejected" in out
    assert "line 4: missing name" in out
    assert "line 5: bad phone '12ab'" in out
    assert "line 6: duplicate account 'A-100' (line 2)" in out
    assert "line 9: no account number and no phone" in out  # the multi-line row counts 2
    assert "line 10: bad vip value 'maybe'" in out
    assert "line 3:" not in out and "line 7:" not in out
    assert "imported 8/8 rows (100%)" in err  # progress, one line per 10 % on a pipe
    with open(rejects, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["line"] for r in rows] == ["4", "5", "6", "9", "10"]
    assert rows[1]["phone"] == "12ab" and rows[1]["account_number"] == "A-400"

    store = CallStore(db_url)
    try:
        wang = store.lookup("caller", "5551234001")
        assert wang is not None and (wang.name, wang.vip, wang.tier) == ("Wang Fang", True, "gold")
        assert (wang.tags, wang.owner, wang.email) == (
            ["wholesale", "tea"],
            "alice",
            "wang@lotus.example",
        )
        assert wang.phones == ["+15551234000", "+15551234001"]
        ana = store.lookup("caller", "+351211234567")
        assert ana is not None and (ana.name, ana.company, ana.language, ana.vip) == (
            'Ana "Ann" Silva', "Silva\nLda", "pt-BR", True,
        )  # fmt: skip
    finally:
        store.close()

    code, out, _ = run(capsys, *argv)
    assert "8 rows: 0 added, 0 updated, 3 unchanged, 5 rejected" in out


def test_rows_update_customers_by_account_or_by_phone(
    db_url: str,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = tmp_path / "first.csv"
    first.write_text(
        "name,phone,account_number,tier\n"
        "Wang Fang,555-123-4000,A-100,gold\n"
        "Walk In,555-300-0000,,\n"
    )
    argv = ["--database", db_url, "--data-dir", str(tmp_path)]
    assert run(capsys, "import", "customers", str(first), *argv)[0] == 0
    second = tmp_path / "second.csv"
    second.write_text(
        "name;phone;account_number;tier;vip\n"  # semicolons, as some spreadsheets write
        "Wang Fang;+1 555 123 4999;A-100;;yes\n"  # by account: a second number, now VIP
        "Walk In;+15553000000;A-500;silver;\n"  # by phone: gains an account
        "Shared Line;555-123-4000;A-600;;\n"  # Wang's number, another account: a new customer
    )
    code, out, _ = run(capsys, "import", "customers", str(second), *argv)
    assert code == 0 and "3 rows: 1 added, 2 updated, 0 unchanged, 0 rejected" in out
    store = CallStore(db_url)
    try:
        wang = store.lookup("account", "A-100")
        assert wang is not None and wang.vip and wang.tier == "gold"  # an empty cell keeps
        assert wang.phones == ["+15551234000", "+15551234999"]
        walk_in = store.lookup("caller", "5553000000")
        assert walk_in is not None and (walk_in.account_number, walk_in.tier) == ("A-500", "silver")
        assert [c.name for c in store.search_customers("4000")] == ["Shared Line", "Wang Fang"]
    finally:
        store.close()
    third = tmp_path / "third.csv"
    third.write_text("name,phone\nWho Is It,555-123-4000\n")  # two customers have it
    code, out, _ = run(capsys, "import", "customers", str(third), *argv)
    assert code == 1 and "line 2: phone matches 2 customers" in out


def test_a_file_without_a_name_column_is_refused_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("company,phone\nAcme,5551234\n")
    url = f"sqlite:///{tmp_path / 'k.sqlite3'}"
    code, _, err = run(capsys, "import", "customers", str(path), "--database", url)
    assert code == 2 and "no 'name' column" in err


def test_db_upgrade_migrates_once(
    db_url: str,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "db", "upgrade", "--database", db_url, "--data-dir", str(tmp_path))
    assert code == 0 and out.strip().endswith(f"empty -> {head_revision()}")
    code, out, _ = run(capsys, "db", "upgrade", "--database", db_url, "--data-dir", str(tmp_path))
    assert code == 0 and out.strip().endswith(f"already at {head_revision()}")
