"""Answer equivalence with math-verify, guarded by a worker process with a timeout.

math-verify times out through ``signal.alarm``, which only works in the main thread. Its own
timeouts are switched off here; instead each check runs in a separate worker process that is killed
and replaced when it overruns, so a pathological expression can neither hang evaluation nor fail
inside DataLoader workers or threads.

The worker is forked while that is safe. Once CUDA is initialised (GPU training and evaluation), a forked child
would inherit the CUDA context and the locks of the driver's and NCCL's threads, so the worker comes from
``multiprocessing``'s fork server instead: a clean process that imports this module and math-verify once and forks
every worker from there. Like ``spawn``, a fork server child imports the main script (as ``__mp_main__``), so a
script that evaluates on a GPU keeps its work under ``if __name__ == "__main__":`` (``lit-dft`` and
``python -m lit_dft`` do; notebooks and ``python -c`` have no script to import).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import re
import signal
from dataclasses import dataclass
from fractions import Fraction

import torch

from lit_dft.errors import LitDFTError
from lit_dft.evaluation.numbers import e_notation_as_latex, parse_number

_SPACES = re.compile(r"\s+")
_START_TIMEOUT_S = 120.0  # a fork server's first worker waits for it to import lit_dft (seconds on a busy node)


def _normalise(answer: str) -> str:
    answer = (
        _SPACES.sub("", answer).rstrip(".").replace("\\dfrac", "\\frac").replace("\\left", "").replace("\\right", "")
    )
    return answer.removeprefix("$").removesuffix("$")


def _verify(prediction: str, gold: str) -> bool:
    """math-verify's verdict on two answers, each read as the content of a ``\\boxed{}``."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns that its own timeouts are off
    parsed_gold = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    parsed_prediction = parse(f"\\boxed{{{prediction}}}", parsing_timeout=None)
    return bool(verify(parsed_gold, parsed_prediction, timeout_seconds=None))


def _compare_numbers(prediction: str, gold: str, significant_figures: bool) -> Verdict | None:
    """The verdict when both are plain numbers, compared exactly; None to leave it to math-verify (not both
    numbers, a fraction that is not exactly the other number, or a number too odd to read)."""
    try:
        predicted, expected = parse_number(prediction), parse_number(gold)
        if not (predicted and expected):
            return None
        if predicted.matches(expected, significant_figures):
            return Verdict(True)
        fraction = isinstance(predicted.value, Fraction) or isinstance(expected.value, Fraction)
        return None if fraction else Verdict(False, "not equivalent")  # 0.3333333 for 1/3: math-verify rounds
    except (ArithmeticError, ValueError):
        return None


def _plain_list(text: str) -> list[str] | None:
    """The items of a comma-separated answer without brackets (a tuple, interval or set is not plain)."""
    text = text.strip().strip("$")
    return None if any(c in text for c in "()[]{}") or parse_number(text) else text.split(",")


def _list_lengths_differ(prediction: str, gold: str) -> bool:
    golds = _plain_list(gold)
    predictions = [prediction] if parse_number(prediction) else _plain_list(prediction)  # a number is one item
    return golds is not None and len(golds) > 1 and predictions is not None and len(predictions) != len(golds)


@dataclass
class Verdict:
    correct: bool
    reason: str = ""
    """Why the answer is counted incorrect: no answer, timeout, not equivalent, checker error."""


def _default_signal_handlers() -> None:
    """In the worker: SIGTERM ends it quietly (a forked worker inherits the trainer's SIGTERM handler, which would
    announce ``close()``'s terminate as a scheduler's SIGTERM), and Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _import_math_verify() -> None:
    """In the worker, before the first check: a check's timeout then measures the check, not the import."""
    import math_verify  # noqa: F401


def _start_method() -> str:
    """``fork`` while no CUDA context exists (the worker imports nothing: notebooks, scripts without a main guard),
    else ``forkserver`` (``spawn`` where there is none): forking a process that has initialised CUDA is unsafe."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and not torch.cuda.is_initialized():
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


class AnswerChecker:
    """Compares extracted answers to gold answers; all gold parts must match (OlympiadBench lists).

    Args:
        timeout_s: seconds one check may take before it counts as incorrect with reason ``timeout``.
    """

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self._pool = None

    def _worker(self):
        if self._pool is None:
            method = _start_method()
            context = multiprocessing.get_context(method)
            if method == "forkserver":  # no effect once the server runs; then each worker imports the checker itself
                context.set_forkserver_preload([__name__, "math_verify"])
            self._pool = context.Pool(1, initializer=_default_signal_handlers)
            atexit.register(self.close)  # shut it down before the interpreter does, which warns in Pool.__del__
            try:
                self._pool.apply_async(_import_math_verify).get(_START_TIMEOUT_S)
            except multiprocessing.TimeoutError:
                self.close()
                raise LitDFTError(
                    f"The answer checker's worker process ({method}) did not start within {_START_TIMEOUT_S:.0f} s "
                    "(a forkserver or spawn worker imports the main script: is its work under if __name__ == '__main__'?)"
                ) from None
        return self._pool

    def _equivalent(self, prediction: str, gold: str, significant_figures: bool = False) -> Verdict:
        if _normalise(prediction) == _normalise(gold):
            return Verdict(True)
        verdict = _compare_numbers(prediction, gold, significant_figures)
        if verdict is not None:
            return verdict
        prediction, gold = e_notation_as_latex(prediction), e_notation_as_latex(gold)  # math-verify: 4.5*e*33
        if _list_lengths_differ(prediction, gold):  # math-verify compares lists as sets: "-2" would match "-2, -2"
            return Verdict(False, "not equivalent")
        worker = self._worker()  # outside the try: a worker that cannot start is an error, not a wrong answer
        try:
            same = worker.apply_async(_verify, (prediction, gold)).get(self.timeout_s)
        except multiprocessing.TimeoutError:
            self.close()  # kill the stuck worker; the next check starts a fresh one
            return Verdict(False, "timeout")
        except Exception as error:  # noqa: BLE001 - a checker failure is a wrong answer, not a crash
            return Verdict(False, f"checker error: {type(error).__name__}")
        return Verdict(True) if same else Verdict(False, "not equivalent")

    def check(self, prediction: str | None, golds: list[str], significant_figures: bool = False) -> Verdict:
        """``significant_figures``: match numbers at the precision the gold states (see ``numbers``)."""
        if not golds:
            return Verdict(False, "no gold answer")
        if prediction is None or not prediction.strip():
            return Verdict(False, "no answer found")
        return self._equivalent(prediction, ", ".join(golds), significant_figures)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
            atexit.unregister(self.close)

    def __getstate__(self) -> dict:
        return {"timeout_s": self.timeout_s, "_pool": None}
