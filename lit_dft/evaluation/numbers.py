"""Plain numbers in answers, read exactly: decimals, fractions, e-notation, ``\\times 10^{k}``, thousands
separators, percents.

math-verify reads ``4.5e33`` as 4.5 * e * 33 (Euler's number), so about a fifth of Minerva Math's gold
answers could only be matched verbatim. Numbers are compared here as the exact decimals they are.

Rules (documented in the README):
- ``x\\%`` matches a gold ``x`` and the reverse: the percent sign is a unit. A value is never divided by
  100 for a gold without one; for a gold written as a percent, its fraction (``0.625`` for ``62.5\\%``)
  matches too.
- Significant figures (a per-preset rule, off by default): a gold written with a decimal point or in
  scientific notation states its precision (``4.5e33``: two figures), and a prediction matches when it
  rounds to the gold at that precision (``4.52e33`` does, ``4.6e33`` does not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction

_MANTISSA = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_SCIENTIFIC = re.compile(
    rf"^(?P<m>{_MANTISSA})(?:[eE](?P<e>[+-]?\d+)|(?:\\times|\\cdot|\*|×)10\^(?:\{{(?P<b>[+-]?\d+)\}}|(?P<d>[+-]?\d)))$"
)
_FRACTION = re.compile(r"^(?P<sign>[+-]?)\\[dt]?frac\{(?P<n>\d+)\}\{(?P<d>\d+)\}$")
_POWER_OF_TEN = re.compile(r"^10\^(?:\{(?P<b>[+-]?\d+)\}|(?P<d>[+-]?\d))$")
_PLAIN = re.compile(rf"^{_MANTISSA}$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_LATEX_SPACING = re.compile(r"\\[!,;: ]|\{,\}|\s|\$|\\left|\\right")
_PERCENT = re.compile(r"(\\?%|\\percent)$")
_LIST_SEPARATOR = re.compile(r",\s")
_UNIT = re.compile(r"\\(?:text|mathrm|mbox)\{[^{}]*\}$")  # a trailing "\text{ cm}"


@dataclass(frozen=True)
class Number:
    value: Decimal | Fraction
    significant_figures: int | None
    """How many figures the text states (a decimal point or scientific notation), else None."""
    percent: bool = False

    def matches(self, gold: Number, significant_figures: bool = False) -> bool:
        """Whether this prediction equals ``gold`` (at the gold's stated precision with ``significant_figures``)."""
        candidates = [self.value]
        if gold.percent and not self.percent:
            candidates.append(self.value * 100)  # 0.625 for a gold 62.5%
        figures = gold.significant_figures if significant_figures else None
        return any(_round(value, figures) == gold.value if figures else value == gold.value for value in candidates)


def parse_number(text: str) -> Number | None:
    """The exact number ``text`` writes, or None when it is not a plain number."""
    if _LIST_SEPARATOR.search(text):  # "8, 221" is a list of two numbers, not 8,221
        return None
    text = _UNIT.sub("", _LATEX_SPACING.sub("", text).rstrip(".")).rstrip("~")
    text, percent = _PERCENT.sub("", text), bool(_PERCENT.search(text))
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    if _PLAIN.match(text):
        return Number(Decimal(text), _figures(text) if "." in text else None, percent)
    if match := _SCIENTIFIC.match(text):
        exponent = int(match["e"] or match["b"] or match["d"])
        return Number(Decimal(match["m"]).scaleb(exponent), _figures(match["m"]), percent)
    if match := _POWER_OF_TEN.match(text):
        return Number(Decimal(1).scaleb(int(match["b"] or match["d"])), 1, percent)
    if (match := _FRACTION.match(text)) and int(match["d"]):
        return Number(Fraction(int(match["sign"] + match["n"]), int(match["d"])), None, percent)
    return None


def as_latex(number: Number) -> str:
    """A form math-verify reads as the same number (it reads ``4.5e33`` as 4.5 * e * 33)."""
    sign, digits, exponent = number.value.normalize().as_tuple()
    mantissa = ("-" if sign else "") + str(digits[0]) + ("." + "".join(map(str, digits[1:])) if digits[1:] else "")
    power = exponent + len(digits) - 1
    return f"{mantissa}\\times10^{{{power}}}" if power else mantissa


def _figures(mantissa: str) -> int:
    digits = mantissa.lstrip("+-").replace(".", "").lstrip("0")
    return max(len(digits), 1)


def _round(value: Decimal | Fraction, figures: int) -> Decimal:
    if value == 0:
        return Decimal(0)
    if isinstance(value, Fraction):
        with localcontext(prec=100):
            value = Decimal(value.numerator) / Decimal(value.denominator)
    return value.quantize(Decimal(1).scaleb(value.adjusted() - figures + 1), rounding=ROUND_HALF_EVEN)
