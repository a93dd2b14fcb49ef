"""Plain-text trial balance for the terminal."""

from ..money import format_amount
from .balance import BalanceRow, column_totals


def render_trial_balance(rows: list[BalanceRow]) -> str:
    lines = [f"{'Code':<6}{'Account':<24}{'Debit':>12}{'Credit':>12}"]
    for row in rows:
        lines.append(f"{row.code:<6}{row.name:<24}{format_amount(row.debit):>12}{format_amount(row.credit):>12}")
    debit, credit = column_totals(rows)
    lines.append(f"{'':<6}{'Total':<24}{format_amount(debit):>12}{format_amount(credit):>12}")
    return "\n".join(lines)
