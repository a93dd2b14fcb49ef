import unittest
from datetime import date

from tinyledger import Entry, Journal, default_chart
from tinyledger.reports.balance import trial_balance
from tinyledger.reports.text import render_trial_balance


class RenderTrialBalanceTest(unittest.TestCase):
    def test_one_line_per_account_and_a_total(self):
        journal = Journal(default_chart())
        journal.post(Entry(date(2026, 3, 2), "supplies").debit("5100", "1234.5").credit("1000", "1234.5"))
        lines = render_trial_balance(trial_balance(journal.chart)).splitlines()
        self.assertEqual(len(lines), 4)
        self.assertTrue(lines[2].startswith("5100  Supplies"))
        self.assertTrue(lines[3].endswith("1,234.50    1,234.50"))


if __name__ == "__main__":
    unittest.main()
