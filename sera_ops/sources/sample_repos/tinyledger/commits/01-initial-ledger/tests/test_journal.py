import unittest
from datetime import date
from decimal import Decimal

from tinyledger import AccountError, Entry, Journal, UnbalancedEntryError, default_chart
from tinyledger.reports.balance import balance_sheet, is_in_balance, net_income, trial_balance


class JournalTest(unittest.TestCase):
    def setUp(self):
        self.journal = Journal(default_chart())
        self.journal.post(Entry(date(2026, 1, 5), "owner invests").debit("1000", "5000").credit("3000", "5000"))
        self.journal.post(Entry(date(2026, 1, 9), "sale on account").debit("1100", "1200").credit("4000", "1200"))
        self.journal.post(Entry(date(2026, 1, 31), "January rent").debit("5000", "800").credit("1000", "800"))
        self.cash = self.journal.chart.get("1000")

    def test_posting_moves_balances(self):
        self.assertEqual(self.cash.balance(), Decimal("4200.00"))
        self.assertEqual(self.journal.chart.get("4000").balance(), Decimal("1200.00"))

    def test_unbalanced_entry_is_rejected_without_side_effects(self):
        with self.assertRaises(UnbalancedEntryError):
            self.journal.post(Entry(date(2026, 2, 1), "typo").debit("1000", "10").credit("4000", "1"))
        self.assertEqual(self.cash.balance(), Decimal("4200.00"))
        self.assertEqual(len(self.journal.entries), 3)

    def test_unknown_account_is_rejected_without_side_effects(self):
        with self.assertRaises(AccountError):
            self.journal.post(Entry(date(2026, 2, 1), "where to?").debit("9999", "1").credit("1000", "1"))
        self.assertEqual(self.cash.balance(), Decimal("4200.00"))

    def test_reports_balance(self):
        self.assertTrue(is_in_balance(trial_balance(self.journal.chart)))
        self.assertEqual(net_income(self.journal.chart), Decimal("400.00"))
        sheet = balance_sheet(self.journal.chart)
        self.assertEqual(sheet["asset"], sheet["liability"] + sheet["equity"] + sheet["net income"])

    def test_replay_recomputes_balances(self):
        del self.journal.entries[2]
        self.journal.replay()
        self.assertEqual(self.cash.balance(), Decimal("5000.00"))


if __name__ == "__main__":
    unittest.main()
