"""Journals as CSV: one row per line, and the rows of one entry share its entry number."""

import csv
from datetime import date
from pathlib import Path

from ..accounts import ChartOfAccounts
from ..journal import Entry, Journal
from ..money import MoneyError, parse_amount

FIELDS = ("entry", "date", "memo", "account", "debit", "credit")


def journal_rows(journal: Journal):
    for number, entry in enumerate(journal.entries, start=1):
        for line in entry.lines:
            yield {
                "entry": number,
                "date": entry.day.isoformat(),
                "memo": entry.memo,
                "account": line.account,
                "debit": line.debit or "",
                "credit": line.credit or "",
            }


def write_journal(journal: Journal, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(journal_rows(journal))


def read_entries(path: Path) -> list[Entry]:
    """Group rows back into entries; the rows of an entry must be adjacent, as write_journal leaves them."""
    entries: list[Entry] = []
    numbers: list[str] = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)

        def amount(row, column):
            text = row[column].strip()
            try:
                return parse_amount(text) if text else None
            except MoneyError as error:
                raise ValueError(f"{path}, line {reader.line_num}: {error}") from None

        for row in reader:
            if not numbers or row["entry"] != numbers[-1]:
                numbers.append(row["entry"])
                entries.append(Entry(date.fromisoformat(row["date"]), row["memo"]))
            debit, credit = amount(row, "debit"), amount(row, "credit")
            if (debit is None) == (credit is None):
                raise ValueError(f"{path}, line {reader.line_num}: fill exactly one of debit and credit")
            if debit is None:
                entries[-1].credit(row["account"], credit)
            else:
                entries[-1].debit(row["account"], debit)
    return entries


def load_journal(path: Path, chart: ChartOfAccounts) -> Journal:
    journal = Journal(chart)
    for entry in read_entries(path):
        journal.post(entry)
    return journal
