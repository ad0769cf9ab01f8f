"""Answer equivalence with math-verify, guarded by a worker process with a timeout.

math-verify times out through ``signal.alarm``, which only works in the main thread. Its own
timeouts are switched off here; instead each check runs in a separate worker process that is killed
and replaced when it overruns, so a pathological expression can neither hang evaluation nor fail
inside DataLoader workers or threads.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
from dataclasses import dataclass

_SPACES = re.compile(r"\s+")


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


@dataclass
class Verdict:
    correct: bool
    reason: str = ""
    """Why the answer is counted incorrect: no answer, timeout, not equivalent, checker error."""


class AnswerChecker:
    """Compares extracted answers to gold answers; all gold parts must match (OlympiadBench lists).

    Args:
        timeout_s: seconds one check may take before it counts as incorrect with reason ``timeout``.
    """

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self._pool = None

    def _worker(self):
        if self._pool is None:  # fork: the worker needs no import of __main__ (notebooks, stdin scripts)
            methods = multiprocessing.get_all_start_methods()
            self._pool = multiprocessing.get_context("fork" if "fork" in methods else "spawn").Pool(1)
        return self._pool

    def _equivalent(self, prediction: str, gold: str) -> Verdict:
        if _normalise(prediction) == _normalise(gold):
            return Verdict(True)
        try:
            same = self._worker().apply_async(_verify, (prediction, gold)).get(self.timeout_s)
        except multiprocessing.TimeoutError:
            self.close()  # kill the stuck worker; the next check starts a fresh one
            return Verdict(False, "timeout")
        except Exception as error:  # noqa: BLE001 - a checker failure is a wrong answer, not a crash
            return Verdict(False, f"checker error: {type(error).__name__}")
        return Verdict(True) if same else Verdict(False, "not equivalent")

    def check(self, prediction: str | None, golds: list[str]) -> Verdict:
        if not golds:
            return Verdict(False, "no gold answer")
        if prediction is None or not prediction.strip():
            return Verdict(False, "no answer found")
        if len(golds) == 1:
            return self._equivalent(prediction, golds[0])
        return self._equivalent(prediction, ", ".join(golds))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def __getstate__(self) -> dict:
        return {"timeout_s": self.timeout_s, "_pool": None}
