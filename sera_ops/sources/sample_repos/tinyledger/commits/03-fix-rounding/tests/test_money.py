import unittest
from decimal import Decimal

from tinyledger.money import MoneyError, format_amount, parse_amount, round_amount, split_evenly


class ParseAmountTest(unittest.TestCase):
    def test_reads_grouping_and_accounting_negatives(self):
        self.assertEqual(parse_amount("1,234.5"), Decimal("1234.50"))
        self.assertEqual(parse_amount(" (12) "), Decimal("-12.00"))

    def test_rejects_text_that_is_not_an_amount(self):
        for text in ("", "twelve", "NaN", "1.2.3"):
            with self.subTest(text=text), self.assertRaises(MoneyError):
                parse_amount(text)


class FormatAmountTest(unittest.TestCase):
    def test_groups_thousands_and_appends_the_code(self):
        self.assertEqual(format_amount(Decimal("1234567.8"), with_code=True), "1,234,567.80 EUR")

    def test_unknown_currency(self):
        with self.assertRaises(MoneyError):
            format_amount(1, "XYZ")


class SplitEvenlyTest(unittest.TestCase):
    def test_shares_add_up_to_the_total(self):
        self.assertEqual(split_evenly(Decimal(100), 3), [Decimal("33.34"), Decimal("33.33"), Decimal("33.33")])
        self.assertEqual(split_evenly(Decimal("-0.05"), 2), [Decimal("-0.03"), Decimal("-0.02")])


class RoundAmountTest(unittest.TestCase):
    def test_half_cents_round_away_from_zero(self):
        self.assertEqual(round_amount(Decimal("0.125")), Decimal("0.13"))
        self.assertEqual(round_amount(Decimal("-0.125")), Decimal("-0.13"))

    def test_floats_round_as_written(self):
        self.assertEqual(round_amount(1.005), Decimal("1.01"))

    def test_currency_without_minor_unit(self):
        self.assertEqual(format_amount(Decimal("1234.5"), "JPY"), "1,235")


if __name__ == "__main__":
    unittest.main()
