"""Numbers in answers: e-notation, powers of ten, percents and significant figures, on real gold answers."""

import json
import subprocess
import sys
from decimal import Decimal

import pytest

from lit_dft.evaluation import AnswerChecker, last_boxed
from lit_dft.evaluation.numbers import parse_number
from tests.conftest import SHARED_DATA


@pytest.fixture(scope="module")
def checker():
    checker = AnswerChecker()
    yield checker
    checker.close()


def _minerva_e_notation_golds() -> list[str]:
    rows = [json.loads(line) for line in (SHARED_DATA / "minerva_math/test.jsonl").open()]
    golds = [last_boxed(row["solution"]) for row in rows]
    return [
        g for g in golds if g and "e" in g and parse_number(g) and parse_number(g).value != Decimal(g.split("e")[0])
    ]


def _mantissa_exponent(gold: str) -> tuple[str, int]:
    mantissa, exponent = gold.split("e")
    return mantissa, int(exponent)


def test_every_minerva_e_notation_gold_accepts_its_other_forms_and_rejects_near_misses(checker):
    golds = _minerva_e_notation_golds()
    assert len(golds) == 58, "the issue counts 58 such golds in Minerva Math"
    for gold in golds:
        mantissa, k = _mantissa_exponent(gold)
        value = Decimal(mantissa).scaleb(k)
        for form in (f"{mantissa} \\times 10^{{{k}}}", f"{mantissa}\\cdot10^{{{k}}}", f"{value:f}", gold):
            assert checker.check(form, [gold]).correct, (form, gold)
        for wrong in (f"{mantissa}\\times10^{{{k + 2}}}", f"-{mantissa}\\times10^{{{k}}}", f"{value * 100:f}"):
            assert not checker.check(wrong, [gold]).correct, (wrong, gold)


@pytest.mark.parametrize(
    "prediction, gold, correct",
    [
        ("62.5\\%", "62.5", True),  # the percent sign is a unit
        ("62.5", "62.5\\%", True),
        ("0.625", "62.5\\%", True),  # the gold says percent: its fraction is the same quantity
        ("0.625", "62.5", False),  # never /100 when the gold does not say so
        ("6250", "62.5", False),  # 100x too large
        ("6250\\%", "62.5\\%", False),
        ("8\\%", "$8 \\%$", True),  # OlympiadBench writes it so
        ("12,345", "12345", True),
        ("12,34", "1234", False),  # not a thousands separator
        ("-3e6", "3e6", False),
        ("3.0e6", "3e6", True),
        ("1/3", "0.333", False),  # no tolerance on exact sets
        ("\\frac{139}{1000000000000}", "1.39e-10", True),  # fractions are exact too
        ("5\\text{ cm}", "5", True),
        ("4.5e33\\text{ J}", "4.5e33", True),
        ("-2", "-2, -2", False),  # math-verify alone compares lists as sets
        ("16, 3, 1", "16,3,1,1", False),
        ("8, 221", "221, 8", True),  # a list, not the number 8,221
        ("3{,}5", "35", False),  # a decimal comma, not a thousands separator
        ("0,500", "500", False),
        ("E = 4.5e33", "4.5e33", True),  # e-notation inside an expression reaches math-verify as a number
        ("4.5e33 \\text{ erg s}^{-1}", "4.5e33", True),
        ("0.3333333", "\\frac{1}{3}", True),  # not exactly equal: math-verify's rounding decides, as before
    ],
)
def test_percents_separators_and_near_misses(checker, prediction, gold, correct):
    assert checker.check(prediction, [gold]).correct is correct


@pytest.mark.parametrize(
    "prediction, correct", [("4.52e33", True), ("4.549 \\times 10^{33}", True), ("4.56e33", False), ("4.5e32", False)]
)
def test_significant_figures_are_a_per_preset_rule(checker, prediction, correct):
    from lit_dft.data.presets import PRESETS

    assert PRESETS["minerva_math"].significant_figures and not PRESETS["math500"].significant_figures
    assert checker.check(prediction, ["4.5e33"], significant_figures=True).correct is correct
    assert checker.check(prediction, ["4.5e33"]).correct is False, "exact by default"


@pytest.mark.parametrize(
    "prediction, gold, figures",
    [
        ("1e1000000", "5", False),
        ("1e" + "9" * 5000, "5", False),
        ("2", "1." + "0" * 40, True),
        ("1e-2000000", "0", False),
    ],
)
def test_numbers_too_odd_to_read_are_wrong_answers_not_crashes(checker, prediction, gold, figures):
    assert checker.check(prediction, [gold], figures).correct is False


def test_significant_figures_round_halves_up(checker):
    assert checker.check("1.45", ["1.5"], significant_figures=True).correct


@pytest.mark.slow
def test_the_checker_worker_shuts_down_cleanly_at_exit():
    # a SIGTERM handler such as the trainer's: the forked worker must not run it when it is terminated
    script = "import os, signal, time; signal.signal(signal.SIGTERM, lambda *a: print('handler ran', flush=True)); "
    script += "from lit_dft.evaluation import AnswerChecker; checker = AnswerChecker(); "
    script += "print(checker.check('\\\\frac{1}{2}', ['0.5'])); "
    script += (
        "worker = checker._worker(); worker.apply(abs, (-1,)); worker.apply_async(time.sleep, (1,)); time.sleep(0.3); "
    )
    script += "os.kill(worker._pool[0].pid, signal.SIGTERM); "
    script += "time.sleep(1)"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "correct=True" in run.stdout, run.stderr
    assert "handler ran" not in run.stdout
    assert "Exception ignored" not in run.stderr and "Traceback" not in run.stderr, run.stderr
