"""`kefu import customers FILE.csv`: customers from a spreadsheet into the built-in CRM.

Columns (header row, any order, any case; unknown columns are ignored and named in
the report): `name`, `company`, `phone` (or `phones`: several numbers separated by `;`,
`,` or `|`), `email`, `tier`, `vip` (yes/no, true/false, 1/0), `language`,
`account_number`, `tags` (separated like phones), `owner`. Comma, semicolon or tab
separated, UTF-8 (a BOM is fine).

Each row is matched to an existing customer by account number, else by phone number
(a customer with no account number, or the same one); a match is updated (non-empty
cells win, new numbers are added), no match is added. So importing the same file twice
changes nothing the second time. A row is rejected — with its line number and the
reason — for a missing name, a number that is not a phone number, an account number
seen on an earlier line, a bad vip/email/language value, nothing to match it by (no
account and no phone), or a phone shared by several customers (which one?).

Pure parsing (`parse_row`) is separate from the database work (`import_customers`).
Neighbours: `core.cli` (the command and its progress bar), `crm_link.store`.
"""

from __future__ import annotations

import csv
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from crm_link.models import Customer, PhoneNumber
from crm_link.phones import digits, normalise, split_numbers
from crm_link.store import CallStore

COLUMNS = (
    "name", "company", "phone", "email", "tier", "vip", "language", "account_number",
    "tags", "owner",
)  # fmt: skip
_ALIASES = {
    "phones": "phone", "phone_number": "phone", "phone_numbers": "phone", "telephone": "phone",
    "account": "account_number", "account_no": "account_number", "account_id": "account_number",
    "lang": "language", "e-mail": "email", "e_mail": "email",
}  # fmt: skip
_TRUE = {"1", "true", "yes", "y", "vip"}
_FALSE = {"0", "false", "no", "n", ""}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,4})?$")


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (unreadable, no header, no name column)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomerRow:
    """One valid row: empty strings / None mean "leave as it is" on an update."""

    line: int
    name: str
    company: str = ""
    phones: tuple[tuple[str, str], ...] = ()
    """(as written, E.164)"""
    email: str = ""
    tier: str = ""
    vip: bool | None = None
    language: str = ""
    account_number: str = ""
    tags: tuple[str, ...] | None = None
    owner: str = ""


@dataclass(frozen=True, slots=True)
class Rejected:
    line: int
    reason: str
    row: dict[str, str]


@dataclass(slots=True)
class ImportReport:
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.rows} rows: {self.added} added, {self.updated} updated, "
            f"{self.unchanged} unchanged, {len(self.rejected)} rejected"
        )


def parse_row(line: int, cells: dict[str, str], region: str) -> CustomerRow | str:
    """A valid row, or why it is rejected."""

    def cell(name: str) -> str:
        return (cells.get(name) or "").strip()

    name = cell("name")
    if not name:
        return "missing name"
    phones: list[tuple[str, str]] = []
    for raw in split_numbers(cell("phone")):
        e164 = normalise(raw, region)
        if e164 is None:
            return f"bad phone {raw!r}"
        if all(e164 != known for _, known in phones):
            phones.append((raw, e164))
    account = cell("account_number")
    if not account and not phones:
        return "no account number and no phone (nothing to match it by)"
    vip_text = cell("vip").lower()
    if vip_text not in _TRUE | _FALSE:
        return f"bad vip value {cell('vip')!r} (yes/no)"
    email = cell("email")
    if email and not _EMAIL.match(email):
        return f"bad email {email!r}"
    language = cell("language")
    if language and not _LANGUAGE.match(language):
        return f"bad language {language!r} (a code such as en, zh, pt-BR)"
    too_long = [
        (col, limit)
        for col, limit in (("name", 255), ("company", 255), ("account_number", 64), ("owner", 64),
                           ("tier", 32), ("email", 255))
        if len(cell(col)) > limit
    ]  # fmt: skip
    if too_long:
        col, limit = too_long[0]
        return f"{col} longer than {limit} characters"
    tags = cell("tags")
    return CustomerRow(
        line=line,
        name=name,
        company=cell("company"),
        phones=tuple(phones),
        email=email,
        tier=cell("tier").lower(),
        vip=None if vip_text == "" else vip_text in _TRUE,
        language=language,
        account_number=account,
        tags=tuple(split_numbers(tags)) if tags else None,
        owner=cell("owner"),
    )


def read_rows(path: Path) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
    """(line number, cells by canonical column) for each record, and the ignored columns."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportFileError(f"{path}: cannot read it: {exc}") from exc
    if not text.strip():
        raise ImportFileError(f"{path}: empty file")
    try:
        delimiter = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    header = next(reader, None) or []
    columns = [_canonical(h) for h in header]
    if "name" not in columns:
        raise ImportFileError(f"{path}: no 'name' column (columns: {', '.join(header)})")
    ignored = [h for h, c in zip(header, columns, strict=True) if c not in COLUMNS]
    rows: list[tuple[int, dict[str, str]]] = []
    previous_end = reader.line_num
    for record in reader:
        start, previous_end = previous_end + 1, reader.line_num
        if not any(value.strip() for value in record):
            continue  # blank lines
        cells: dict[str, str] = {}
        for column, value in zip(columns, record, strict=False):
            if column in COLUMNS and value.strip():
                cells[column] = value
        rows.append((start, cells))
    return rows, ignored


def _canonical(header: str) -> str:
    name = re.sub(r"[\s]+", "_", header.strip().lower())
    return _ALIASES.get(name, name)


def import_customers(
    store: CallStore,
    path: Path,
    *,
    now: datetime,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 500,
) -> ImportReport:
    """Import `path` (see the module docstring); `progress(done, total)` after each row."""
    records, ignored = read_rows(path)
    report = ImportReport(rows=len(records), ignored_columns=ignored)
    cells_by_line = dict(records)
    accounts: dict[str, int] = {}
    valid: list[CustomerRow] = []
    for line, cells in records:
        parsed = parse_row(line, cells, store.region)
        if isinstance(parsed, str):
            report.rejected.append(Rejected(line, parsed, cells))
            continue
        if parsed.account_number:
            first = accounts.setdefault(parsed.account_number, line)
            if first != line:
                report.rejected.append(
                    Rejected(
                        line, f"duplicate account {parsed.account_number!r} (line {first})", cells
                    )
                )
                continue
        valid.append(parsed)
    done = len(records) - len(valid)
    if progress is not None and done:
        progress(done, len(records))
    for chunk in _chunks(valid, batch):
        try:
            outcomes = _write(store, chunk, now)
        except SQLAlchemyError:
            # someone else wrote the same customers meanwhile: one row per transaction,
            # so only the row that clashes is rejected
            outcomes = []
            for row in chunk:
                try:
                    outcomes += _write(store, [row], now)
                except SQLAlchemyError as exc:
                    outcomes.append(f"database refused it: {type(exc).__name__}")
        for row, outcome in zip(chunk, outcomes, strict=True):
            if outcome == "added":
                report.added += 1
            elif outcome == "updated":
                report.updated += 1
            elif outcome == "unchanged":
                report.unchanged += 1
            else:
                report.rejected.append(Rejected(row.line, outcome, cells_by_line[row.line]))
            done += 1
            if progress is not None:
                progress(done, len(records))
    report.rejected.sort(key=lambda r: r.line)
    return report


def _chunks(rows: list[CustomerRow], size: int) -> Iterator[list[CustomerRow]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _write(store: CallStore, rows: list[CustomerRow], now: datetime) -> list[str]:
    """Upsert `rows` in one transaction: `added`, `updated`, `unchanged` or a reason."""
    outcomes: list[str] = []
    with store.sessions.begin() as session:
        for row in rows:
            found = _match(session, row)
            if isinstance(found, str):
                outcomes.append(found)
                continue
            if found is None:
                session.add(_new(row, now))
                outcomes.append("added")
            else:
                outcomes.append("updated" if _update(found, row, now) else "unchanged")
            session.flush()
    return outcomes


def _match(session: Session, row: CustomerRow) -> Customer | str | None:
    if row.account_number:
        by_account = session.scalars(
            select(Customer).where(Customer.account_number == row.account_number)
        ).first()
        if by_account is not None:
            return by_account
    if not row.phones:
        return None
    # (a subquery, not DISTINCT: PostgreSQL has no equality for the JSON tags column)
    numbers = select(PhoneNumber.customer_id).where(
        PhoneNumber.e164.in_([e164 for _, e164 in row.phones])
    )
    owners = list(
        session.scalars(
            select(Customer).where(Customer.customer_id.in_(numbers)).order_by(Customer.customer_id)
        )
    )
    if row.account_number:
        # a number of a customer with another account is a shared number: a new customer
        owners = [c for c in owners if not c.account_number]
    if len(owners) > 1:
        ids = ", ".join(c.customer_id for c in owners[:3])
        return f"phone matches {len(owners)} customers ({ids}): give the account number"
    return owners[0] if owners else None


def _new(row: CustomerRow, now: datetime) -> Customer:
    customer = Customer(
        customer_id=f"c-{uuid.uuid4().hex[:12]}",
        name=row.name,
        company=row.company,
        tier=row.tier or "standard",
        vip=bool(row.vip),
        language=row.language,
        account_number=row.account_number or None,
        phone=digits(row.phones[0][0]) if row.phones else None,
        email=row.email or None,
        tags=list(row.tags or ()),
        owner=row.owner or None,
        created_at=now,
        updated_at=now,
    )
    customer.phones = [PhoneNumber(raw=raw, e164=e164, label="") for raw, e164 in row.phones]
    return customer


def _update(customer: Customer, row: CustomerRow, now: datetime) -> bool:
    changes: dict[str, object] = {
        "name": row.name,
        "company": row.company or None,
        "tier": row.tier or None,
        "vip": row.vip,
        "language": row.language or None,
        "account_number": row.account_number or None,
        "email": row.email or None,
        "owner": row.owner or None,
        "tags": list(row.tags) if row.tags is not None else None,
    }
    changed = False
    for name, value in changes.items():
        if value is not None and getattr(customer, name) != value:
            setattr(customer, name, value)
            changed = True
    known = {p.e164 for p in customer.phones}
    for raw, e164 in row.phones:
        if e164 not in known:
            customer.phones.append(PhoneNumber(raw=raw, e164=e164, label=""))
            known.add(e164)
            changed = True
    if not customer.phone and row.phones:
        customer.phone = digits(row.phones[0][0])
        changed = True
    if changed:
        customer.updated_at = now
    return changed


def write_rejects(report: ImportReport, path: Path) -> None:
    """The rejected rows as a CSV (line, reason, then the columns) to fix and import again."""
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["line", "reason", *COLUMNS])
        for rejected in report.rejected:
            writer.writerow(
                [rejected.line, rejected.reason, *(rejected.row.get(c, "") for c in COLUMNS)]
            )
