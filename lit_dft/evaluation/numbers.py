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
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction

_MANTISSA = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_SCIENTIFIC = re.compile(
    rf"^(?P<m>{_MANTISSA})(?:[eE](?P<e>[+-]?\d+)|(?:\\times|\\cdot|\*|×)10\^(?:\{{(?P<b>[+-]?\d+)\}}|(?P<d>[+-]?\d)))$"
)
_FRACTION = re.compile(r"^(?P<sign>[+-]?)\\[dt]?frac\{(?P<n>\d+)\}\{(?P<d>\d+)\}$")
_POWER_OF_TEN = re.compile(r"^10\^(?:\{(?P<b>[+-]?\d+)\}|(?P<d>[+-]?\d))$")
_PLAIN = re.compile(rf"^{_MANTISSA}$")
_THOUSANDS = re.compile(r"^[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")
_LATEX_SPACING = re.compile(r"\\[!,;: ]|\s|\$|\\left|\\right")
_E_NUMBER = re.compile(r"(?<![\w.])([+-]?\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")
_MAX_EXPONENT = 10_000  # beyond any physical answer; keeps Decimal far from its limits
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
    """The exact number ``text`` writes, or None when it is not a plain number (or too odd to read)."""
    try:
        return _parse(text)
    except (ArithmeticError, ValueError):  # e.g. a 5,000-digit integer
        return None


def _parse(text: str) -> Number | None:
    if _LIST_SEPARATOR.search(text):  # "8, 221" is a list of two numbers, not 8,221
        return None
    text = _UNIT.sub("", _LATEX_SPACING.sub("", text.replace("{,}", ",")).rstrip(".")).rstrip("~")
    text, percent = _PERCENT.sub("", text), bool(_PERCENT.search(text))
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    if _PLAIN.match(text):
        return Number(Decimal(text), _figures(text) if "." in text else None, percent)
    if (match := _SCIENTIFIC.match(text)) and _small(exponent := match["e"] or match["b"] or match["d"]):
        return Number(Decimal(match["m"]).scaleb(int(exponent)), _figures(match["m"]), percent)
    if (match := _POWER_OF_TEN.match(text)) and _small(exponent := match["b"] or match["d"]):
        return Number(Decimal(1).scaleb(int(exponent)), 1, percent)
    if (match := _FRACTION.match(text)) and int(match["d"]):
        return Number(Fraction(int(match["sign"] + match["n"]), int(match["d"])), None, percent)
    return None


def e_notation_as_latex(text: str) -> str:
    """Every ``4.5e33`` in ``text`` as ``4.5\\times10^{33}``, which math-verify reads as the number it is."""
    return _E_NUMBER.sub(lambda m: f"{m[1]}\\times10^{{{m[2]}}}", text)


def _small(exponent: str) -> bool:
    return len(exponent.lstrip("+-")) <= 5 and abs(int(exponent)) <= _MAX_EXPONENT


def _figures(mantissa: str) -> int:
    digits = mantissa.lstrip("+-").replace(".", "").lstrip("0")
    return max(len(digits), 1)


def _round(value: Decimal | Fraction, figures: int) -> Decimal:
    """``value`` to ``figures`` significant figures, halves up (the convention for measured quantities)."""
    if value == 0:
        return Decimal(0)
    with localcontext(prec=200):  # answers have at most a few dozen figures: division and quantize stay exact
        if isinstance(value, Fraction):
            value = Decimal(value.numerator) / Decimal(value.denominator)
        return value.quantize(Decimal(1).scaleb(value.adjusted() - figures + 1), rounding=ROUND_HALF_UP)
