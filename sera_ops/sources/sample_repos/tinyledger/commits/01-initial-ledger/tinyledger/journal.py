"""Journal entries and posting: an entry must balance before it may touch any account."""

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from .accounts import AccountError, ChartOfAccounts
from .money import DEFAULT_CURRENCY, parse_amount


class UnbalancedEntryError(ValueError):
    """Debits and credits of an entry differ, so posting it would break the ledger's equation."""


@dataclass(frozen=True)
class Line:
    account: str
    debit: Decimal = Decimal(0)
    credit: Decimal = Decimal(0)

    def __post_init__(self):
        if self.debit < 0 or self.credit < 0:
            raise ValueError(f"line on {self.account}: amounts are never negative, post to the other side")
        if bool(self.debit) == bool(self.credit):
            raise ValueError(f"line on {self.account}: exactly one of debit and credit must be non-zero")


@dataclass
class Entry:
    day: date
    memo: str
    currency: str = DEFAULT_CURRENCY
    lines: list[Line] = field(default_factory=list)

    def debit(self, account: str, amount) -> "Entry":
        self.lines.append(Line(account, debit=parse_amount(str(amount), self.currency)))
        return self

    def credit(self, account: str, amount) -> "Entry":
        self.lines.append(Line(account, credit=parse_amount(str(amount), self.currency)))
        return self

    def totals(self) -> tuple[Decimal, Decimal]:
        debits = sum((line.debit for line in self.lines), Decimal(0))
        credits = sum((line.credit for line in self.lines), Decimal(0))
        return debits, credits

    def is_balanced(self) -> bool:
        debits, credits = self.totals()
        return debits == credits and debits > 0


class Journal:
    """Entries in posting order, applied to the accounts of one chart."""

    def __init__(self, chart: ChartOfAccounts):
        self.chart = chart
        self.entries: list[Entry] = []

    def post(self, entry: Entry) -> int:
        """Validate first, so a rejected entry leaves every balance untouched; returns the entry number."""
        self.validate(entry)
        self._apply(entry)
        self.entries.append(entry)
        return len(self.entries)

    def validate(self, entry: Entry) -> None:
        if not entry.is_balanced():
            debits, credits = entry.totals()
            raise UnbalancedEntryError(f"{entry.memo!r} does not balance: debits {debits}, credits {credits}")
        unknown = sorted({line.account for line in entry.lines if line.account not in self.chart})
        if unknown:
            raise AccountError(f"{entry.memo!r}: unknown accounts {', '.join(unknown)}")

    def replay(self) -> None:
        """Recompute every balance from the entries, e.g. after an entry was removed."""
        self.chart.reset_balances()
        for entry in self.entries:
            self._apply(entry)

    def entries_between(self, start: date, end: date) -> list[Entry]:
        return [entry for entry in self.entries if start <= entry.day <= end]

    def _apply(self, entry: Entry) -> None:
        for line in entry.lines:
            self.chart.get(line.account).apply(line.debit, line.credit)
