"""How often the answer checker is right, on rewrites of the shared benchmarks' own gold answers.

    python -m benchmarks.answer_checking [--limit N]

For every gold answer (the first N per benchmark), programmatic rewrites a model plausibly writes
(must be accepted) and constructed near-misses (must be rejected), each applied only where it makes
sense for that gold. Accuracy per benchmark and per rewrite kind; results in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction

from benchmarks.common import SHARED_DATA, markdown_table, save
from lit_dft.data.presets import PRESETS, gold_answers
from lit_dft.evaluation import AnswerChecker
from lit_dft.evaluation.numbers import parse_number

BENCHMARKS = ("math500", "minerva_math", "olympiadbench", "aime24", "amc23", "gsm8k")
_INTERVAL = re.compile(r"^([\[(])([^,]+),([^,]+)([\])])$")
_TUPLE = re.compile(r"^\(([^,()]+),([^,()]+)\)$")
_FRACTION = re.compile(r"^(-?)\\d?frac\{(\d+)\}\{(\d+)\}$")


def _number(gold: str) -> Decimal | None:
    """The gold's value when it is a plain decimal number (not a fraction or a percent)."""
    number = parse_number(gold)
    return number.value if number and not number.percent and isinstance(number.value, Decimal) else None


def _decimal_text(value: Decimal) -> str:
    return f"{value.normalize():f}"


def _as_fraction(gold: str) -> str | None:
    value = _number(gold)
    if value is None or value == value.to_integral_value():
        return None
    fraction = Fraction(value)
    return f"{'-' if fraction < 0 else ''}\\frac{{{abs(fraction.numerator)}}}{{{fraction.denominator}}}"


def _as_decimal(gold: str) -> str | None:
    match = _FRACTION.match(gold.replace(" ", ""))
    if not match:
        return None
    fraction = Fraction(int(match[2]), int(match[3]))
    if any(p not in (2, 5) for p in _prime_factors(fraction.denominator)):
        return None  # not a terminating decimal
    return match[1] + _decimal_text(Decimal(fraction.numerator) / Decimal(fraction.denominator))


def _prime_factors(n: int) -> set[int]:
    factors, p = set(), 2
    while n > 1 and p * p <= n:
        while n % p == 0:
            factors.add(p)
            n //= p
        p += 1
    return factors | ({n} if n > 1 else set())


def _thousands(gold: str) -> str | None:
    value = _number(gold)
    return f"{int(value):,}" if value is not None and value == int(value) and abs(value) >= 1000 else None


def _scientific(gold: str) -> str | None:
    value = _number(gold)
    if value is None or value == 0:
        return None
    sign, digits, exponent = value.normalize().as_tuple()
    power = exponent + len(digits) - 1
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if digits[1:] else "")
    return f"{'-' if sign else ''}{mantissa} \\times 10^{{{power}}}" if power else None


def _spacing(gold: str) -> str | None:
    spaced = re.sub(r"([=+\-,])", r" \1 ", gold)
    return spaced if spaced != gold else f" {gold} "


def _list_items(gold: str) -> list[str] | None:
    """The items of a plain comma-separated list (not a number with separators, a tuple, interval or set)."""
    if _number(gold) is not None or any(c in gold for c in "([{\\"):
        return None
    parts = [p.strip() for p in gold.split(",")]
    return parts if len(parts) > 1 else None


def _list_reordered(gold: str) -> str | None:
    items = _list_items(gold)
    return ", ".join(reversed(items)) if items else None


def _unit(gold: str) -> str | None:
    return f"{gold}\\text{{ units}}" if _number(gold) is not None else None


def _off_by_one(gold: str) -> str | None:
    """One more in the last place the gold states (so also a near-miss under the significant-figures rule)."""
    number = parse_number(gold)
    if _number(gold) is None:
        return None
    if number.significant_figures is None:
        return _decimal_text(number.value + 1)
    return _decimal_text(number.value + Decimal(1).scaleb(number.value.adjusted() - number.significant_figures + 1))


def _sign(gold: str) -> str | None:
    value = _number(gold)
    return _decimal_text(-value) if value else None


def _times_100(gold: str) -> str | None:
    value = _number(gold)
    return _decimal_text(value * 100) if value else None


def _reciprocal(gold: str) -> str | None:
    value = _number(gold)
    if not value or abs(value) == 1:
        return None
    fraction = 1 / Fraction(value)
    return f"{'-' if fraction < 0 else ''}\\frac{{{abs(fraction.numerator)}}}{{{fraction.denominator}}}"


def _swapped_tuple(gold: str) -> str | None:
    match = _TUPLE.match(gold.replace(" ", ""))
    return f"({match[2]},{match[1]})" if match and match[1] != match[2] else None


def _open_closed(gold: str) -> str | None:
    match = _INTERVAL.match(gold.replace(" ", ""))
    if not match or "infty" in match[2]:
        return None  # an infinite end has one bracket only
    left = "(" if match[1] == "[" else "["
    return f"{left}{match[2]},{match[3]}{match[4]}"


def _dropped_item(gold: str) -> str | None:
    items = _list_items(gold)
    return ", ".join(items[:-1]) if items else None


ACCEPT: dict[str, Callable[[str], str | None]] = {
    "verbatim": lambda gold: gold,
    "spacing": _spacing,
    "decimal -> fraction": _as_fraction,
    "fraction -> decimal": _as_decimal,
    "thousands separators": _thousands,
    "scientific notation": _scientific,
    "reordered list": _list_reordered,
    "unit appended": _unit,
}
REJECT: dict[str, Callable[[str], str | None]] = {
    "off by one": _off_by_one,
    "sign": _sign,
    "100x": _times_100,
    "reciprocal": _reciprocal,
    "swapped tuple": _swapped_tuple,
    "open vs closed interval": _open_closed,
    "dropped list item": _dropped_item,
}


def golds(benchmark: str, limit: int) -> list[list[str]]:
    preset = PRESETS[benchmark]
    rows = [json.loads(line) for line in (SHARED_DATA / benchmark / "test.jsonl").open()][:limit]
    return [answers for answers in (gold_answers(preset, row) for row in rows) if answers]


def measure(limit: int) -> dict:
    checker = AnswerChecker(timeout_s=5.0)
    right: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    failures: list[dict] = []
    try:
        for benchmark in BENCHMARKS:
            figures = PRESETS[benchmark].significant_figures
            for answers in golds(benchmark, limit):
                gold = ", ".join(answers)
                for kinds, expected in ((ACCEPT, True), (REJECT, False)):
                    for kind, rewrite in kinds.items():
                        candidate = rewrite(gold)
                        if candidate is None or (not expected and candidate == gold):
                            continue
                        verdict = checker.check(candidate, answers, figures).correct
                        counts = right[(benchmark, kind)]
                        counts[0] += verdict == expected
                        counts[1] += 1
                        if verdict != expected:
                            failures.append(
                                {"benchmark": benchmark, "kind": kind, "gold": gold, "candidate": candidate}
                            )
    finally:
        checker.close()
    return {"counts": {f"{b}|{k}": v for (b, k), v in right.items()}, "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=10_000, help="gold answers per benchmark")
    args = parser.parse_args()
    result = measure(args.limit)
    save("answer_checking", result)
    counts = {tuple(key.split("|")): value for key, value in result["counts"].items()}
    by_benchmark: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (benchmark, kind), (good, total) in counts.items():
        for table, key in ((by_benchmark, benchmark), (by_kind, kind)):
            table[key][0] += good
            table[key][1] += total
    rows = [[name, total, f"{good / total:.1%}"] for name, (good, total) in by_benchmark.items()]
    kinds = [
        [kind, "accept" if kind in ACCEPT else "reject", total, f"{good / total:.1%}"]
        for kind, (good, total) in by_kind.items()
    ]
    print(markdown_table(["benchmark", "pairs", "checker right"], rows))
    print()
    print(markdown_table(["rewrite", "must", "pairs", "checker right"], kinds))
    print(f"\n{len(result['failures'])} wrong verdicts; first ones:")
    for failure in result["failures"][:25]:
        print(failure)


if __name__ == "__main__":
    main()
