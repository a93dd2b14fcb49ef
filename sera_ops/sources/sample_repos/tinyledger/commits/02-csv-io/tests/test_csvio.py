import tempfile
import unittest
from datetime import date
from decimal import Decimal
from pathlib import Path

from tinyledger import Entry, Journal, default_chart
from tinyledger.io.csvio import load_journal, read_entries, write_journal


class CsvTest(unittest.TestCase):
    def setUp(self):
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        self.path = Path(folder.name) / "journal.csv"

    def test_round_trip_keeps_entries_and_balances(self):
        journal = Journal(default_chart())
        sale = Entry(date(2026, 3, 1), "cash sale, two items").debit("1000", "19.90")
        journal.post(sale.credit("4000", "12").credit("4000", "7.90"))
        journal.post(Entry(date(2026, 3, 2), "rent").debit("5000", "500").credit("1000", "500"))
        write_journal(journal, self.path)
        loaded = load_journal(self.path, default_chart())
        self.assertEqual(loaded.entries, journal.entries)
        self.assertEqual(loaded.chart.get("1000").balance(), Decimal("-480.10"))

    def test_bad_amount_names_its_line(self):
        self.path.write_text(
            "entry,date,memo,account,debit,credit\n1,2026-03-01,x,1000,12,\n1,2026-03-01,x,4000,,abc\n"
        )
        with self.assertRaisesRegex(ValueError, "line 3"):
            read_entries(self.path)


if __name__ == "__main__":
    unittest.main()
