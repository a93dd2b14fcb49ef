"""Accounts and the chart of accounts: which accounts exist, and on which side each one grows."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal

from .money import DEFAULT_CURRENCY, round_amount

KINDS = ("asset", "liability", "equity", "income", "expense")
DEBIT_NORMAL_KINDS = frozenset({"asset", "expense"})


class AccountError(ValueError):
    """An unknown or duplicate account code, or an account kind that does not exist."""


@dataclass
class Account:
    code: str
    name: str
    kind: str
    currency: str = DEFAULT_CURRENCY
    debits: Decimal = Decimal(0)
    credits: Decimal = Decimal(0)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise AccountError(f"account {self.code}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}")

    @property
    def debit_normal(self) -> bool:
        return self.kind in DEBIT_NORMAL_KINDS

    def apply(self, debit: Decimal, credit: Decimal) -> None:
        self.debits += debit
        self.credits += credit

    def balance(self) -> Decimal:
        """Positive when the account sits on its normal side: cash in hand, sales earned, rent paid."""
        net = self.debits - self.credits
        return round_amount(net if self.debit_normal else -net, self.currency)

    def reset(self) -> None:
        self.debits = Decimal(0)
        self.credits = Decimal(0)


class ChartOfAccounts:
    """Accounts by code; iteration is in code order, the order every report uses."""

    def __init__(self, accounts: Iterable[Account] = ()):
        self._accounts: dict[str, Account] = {}
        for account in accounts:
            self.add(account)

    def add(self, account: Account) -> Account:
        if account.code in self._accounts:
            raise AccountError(f"duplicate account code {account.code}")
        self._accounts[account.code] = account
        return account

    def get(self, code: str) -> Account:
        try:
            return self._accounts[code]
        except KeyError:
            raise AccountError(f"unknown account {code}") from None

    def __contains__(self, code: object) -> bool:
        return code in self._accounts

    def __iter__(self) -> Iterator[Account]:
        return iter(sorted(self._accounts.values(), key=lambda account: account.code))

    def by_kind(self, kind: str) -> list[Account]:
        return [account for account in self if account.kind == kind]

    def reset_balances(self) -> None:
        for account in self._accounts.values():
            account.reset()


def default_chart(currency: str = DEFAULT_CURRENCY) -> ChartOfAccounts:
    """A small-business chart numbered the usual way: 1xxx assets, 2xxx liabilities, ... 5xxx expenses."""
    rows = [
        ("1000", "Cash", "asset"),
        ("1100", "Accounts receivable", "asset"),
        ("2000", "Accounts payable", "liability"),
        ("3000", "Owner's equity", "equity"),
        ("4000", "Sales", "income"),
        ("5000", "Rent", "expense"),
        ("5100", "Supplies", "expense"),
    ]
    return ChartOfAccounts(Account(code, name, kind, currency) for code, name, kind in rows)
