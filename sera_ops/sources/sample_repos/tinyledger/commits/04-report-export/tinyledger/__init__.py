"""tinyledger: a tiny double-entry bookkeeping library (standard library only)."""

from .accounts import Account, AccountError, ChartOfAccounts, default_chart
from .io.csvio import load_journal, write_journal
from .journal import Entry, Journal, Line, UnbalancedEntryError
from .money import MoneyError, format_amount, parse_amount, round_amount
from .reports.balance import trial_balance
from .reports.export import export, write_report

__version__ = "0.2.0"

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
    "export",
    "format_amount",
    "load_journal",
    "parse_amount",
    "round_amount",
    "trial_balance",
    "write_journal",
    "write_report",
]
