"""tinyledger: a tiny double-entry bookkeeping library (standard library only)."""

from .accounts import Account, AccountError, ChartOfAccounts, default_chart
from .journal import Entry, Journal, Line, UnbalancedEntryError
from .money import MoneyError, format_amount, parse_amount, round_amount

__version__ = "0.1.0"

__all__ = [
    "Account",
    "AccountError",
    "ChartOfAccounts",
    "Entry",
    "Journal",
    "Line",
    "MoneyError",
    "UnbalancedEntryError",
    "default_chart",
    "format_amount",
    "parse_amount",
    "round_amount",
]
