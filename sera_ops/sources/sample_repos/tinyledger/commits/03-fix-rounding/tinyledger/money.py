"""Money amounts as Decimal: parse user input, round to the currency's minor unit, format for people."""

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

DEFAULT_CURRENCY = "EUR"
MINOR_UNITS = {"EUR": 2, "USD": 2, "GBP": 2, "CHF": 2, "JPY": 0, "KWD": 3}


class MoneyError(ValueError):
    """An amount that cannot be parsed, or a currency whose minor unit we do not know."""


def minor_units(currency: str) -> int:
    """Number of decimal places the currency is kept to."""
    try:
        return MINOR_UNITS[currency.upper()]
    except KeyError:
        raise MoneyError(f"unknown currency {currency!r}") from None


def quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-minor_units(currency))


def round_amount(amount, currency: str = DEFAULT_CURRENCY) -> Decimal:
    """Round half away from zero, as invoices do; a float is read as the decimal text it prints as."""
    if isinstance(amount, float):
        amount = repr(amount)
    return Decimal(amount).quantize(quantum(currency), rounding=ROUND_HALF_UP)


def parse_amount(text: str, currency: str = DEFAULT_CURRENCY) -> Decimal:
    """Read '1,234.50', '-3' or the accountant's '(12.00)' for a negative amount."""
    cleaned = text.strip().replace(",", "").replace(" ", "")
    negative = cleaned.startswith("(") and cleaned.endswith(")")
    if negative:
        cleaned = cleaned[1:-1]
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        raise MoneyError(f"not an amount: {text!r}") from None
    if not value.is_finite():
        raise MoneyError(f"not an amount: {text!r}")
    return round_amount(-value if negative else value, currency)


def format_amount(amount, currency: str = DEFAULT_CURRENCY, with_code: bool = False) -> str:
    text = f"{round_amount(amount, currency):,.{minor_units(currency)}f}"
    return f"{text} {currency.upper()}" if with_code else text


def split_evenly(amount, parts: int, currency: str = DEFAULT_CURRENCY) -> list[Decimal]:
    """Shares that add up exactly to the rounded amount; the leftover minor units go to the first shares."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    total = round_amount(amount, currency)
    step = quantum(currency)
    sign = -1 if total < 0 else 1
    base, leftover = divmod(int(abs(total) / step), parts)
    return [sign * (base + (1 if index < leftover else 0)) * step for index in range(parts)]
