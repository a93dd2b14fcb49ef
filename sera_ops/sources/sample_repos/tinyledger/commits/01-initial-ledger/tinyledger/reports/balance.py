"""Balance reports over a chart of accounts: the trial balance and a simple balance sheet."""

from dataclasses import dataclass
from decimal import Decimal

from ..accounts import ChartOfAccounts
from ..money import round_amount

ZERO = Decimal(0)


@dataclass(frozen=True)
class BalanceRow:
    code: str
    name: str
    debit: Decimal
    credit: Decimal


def trial_balance(chart: ChartOfAccounts) -> list[BalanceRow]:
    """One row per account that has seen a posting, its net amount on the side where it sits."""

    def row(account):
        net = account.debits - account.credits
        debit, credit = (round_amount(max(side, ZERO), account.currency) for side in (net, -net))
        return BalanceRow(account.code, account.name, debit, credit)

    return [row(account) for account in chart if account.debits or account.credits]


def column_totals(rows: list[BalanceRow]) -> tuple[Decimal, Decimal]:
    return sum((row.debit for row in rows), ZERO), sum((row.credit for row in rows), ZERO)


def is_in_balance(rows: list[BalanceRow]) -> bool:
    debit, credit = column_totals(rows)
    return debit == credit


def net_income(chart: ChartOfAccounts) -> Decimal:
    """Income minus expenses, not yet closed into equity."""
    income = sum((account.balance() for account in chart.by_kind("income")), ZERO)
    return income - sum((account.balance() for account in chart.by_kind("expense")), ZERO)


def balance_sheet(chart: ChartOfAccounts) -> dict[str, Decimal]:
    """Totals per kind; assets equal liabilities + equity + net income whenever every entry balanced."""
    kinds = ("asset", "liability", "equity")
    sheet = {kind: sum((account.balance() for account in chart.by_kind(kind)), ZERO) for kind in kinds}
    sheet["net income"] = net_income(chart)
    return sheet
