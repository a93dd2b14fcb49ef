"""Trial balance export as CSV, JSON or aligned text, so other tools and people can read it."""

import csv
import io
import json
from pathlib import Path

from ..money import DEFAULT_CURRENCY, format_amount
from .balance import BalanceRow, column_totals

FIELDS = ("code", "name", "debit", "credit")


def to_records(rows: list[BalanceRow]) -> list[dict[str, str]]:
    return [{"code": row.code, "name": row.name, "debit": str(row.debit), "credit": str(row.credit)} for row in rows]


def to_csv(rows: list[BalanceRow]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(to_records(rows))
    return buffer.getvalue()


def to_json(rows: list[BalanceRow]) -> str:
    debit, credit = column_totals(rows)
    return json.dumps({"rows": to_records(rows), "total_debit": str(debit), "total_credit": str(credit)}, indent=2)


def to_text(rows: list[BalanceRow], currency: str = DEFAULT_CURRENCY) -> str:
    """Aligned columns; zero cells stay blank so each amount stands out on its side."""

    def cell(amount):
        return f"{format_amount(amount, currency) if amount else '':>12}"

    lines = [f"{'Code':<6}{'Account':<24}{'Debit':>12}{'Credit':>12}"]
    lines += [f"{row.code:<6}{row.name:<24}{cell(row.debit)}{cell(row.credit)}" for row in rows]
    debit, credit = column_totals(rows)
    lines.append(f"{'':<6}{'Total':<24}{cell(debit)}{cell(credit)}")
    return "\n".join(lines) + "\n"


RENDERERS = {"csv": to_csv, "json": to_json, "text": to_text}


def export(rows: list[BalanceRow], fmt: str) -> str:
    try:
        render = RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(RENDERERS)}") from None
    return render(rows)


def write_report(rows: list[BalanceRow], path: Path, fmt: str | None = None) -> None:
    """Without a format the file suffix decides: .csv, .json, anything else is text."""
    target = Path(path)
    chosen = fmt or {".csv": "csv", ".json": "json"}.get(target.suffix, "text")
    target.write_text(export(rows, chosen), encoding="utf-8")
