import json
import tempfile
import unittest
from datetime import date
from pathlib import Path

from tinyledger import Entry, Journal, default_chart, export, trial_balance, write_report


class ExportTest(unittest.TestCase):
    def setUp(self):
        journal = Journal(default_chart())
        journal.post(Entry(date(2026, 3, 2), "supplies").debit("5100", "1234.5").credit("1000", "1234.5"))
        self.rows = trial_balance(journal.chart)

    def test_csv_has_one_row_per_account(self):
        lines = export(self.rows, "csv").splitlines()
        self.assertEqual(lines, ["code,name,debit,credit", "1000,Cash,0.00,1234.50", "5100,Supplies,1234.50,0.00"])

    def test_text_leaves_zero_cells_blank(self):
        lines = export(self.rows, "text").splitlines()
        self.assertEqual(lines[1].split(), ["1000", "Cash", "1,234.50"])
        self.assertTrue(lines[1].endswith(" " * 16 + "1,234.50"), "cash sits in the credit column")
        self.assertTrue(lines[-1].endswith("1,234.50    1,234.50"))

    def test_write_report_picks_the_format_from_the_suffix(self):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "trial-balance.json"
            write_report(self.rows, path)
            report = json.loads(path.read_text(encoding="utf-8"))
        self.assertEqual(report["total_debit"], report["total_credit"])
        self.assertEqual([row["code"] for row in report["rows"]], ["1000", "5100"])

    def test_unknown_format(self):
        with self.assertRaisesRegex(ValueError, "choose one of csv, json, text"):
            export(self.rows, "xlsx")


if __name__ == "__main__":
    unittest.main()
