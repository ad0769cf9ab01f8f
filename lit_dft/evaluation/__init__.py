"""Math evaluation: answer readers, equivalence checking, accuracy metrics."""

from lit_dft.evaluation.answers import (
    ANSWER_READERS,
    answer_reader,
    extract_answer,
    gsm8k_answer,
    last_boxed,
    register_answer_reader,
)
from lit_dft.evaluation.checking import AnswerChecker, Verdict
from lit_dft.evaluation.metrics import MathAccuracy

__all__ = [
    "ANSWER_READERS",
    "AnswerChecker",
    "MathAccuracy",
    "Verdict",
    "answer_reader",
    "extract_answer",
    "gsm8k_answer",
    "last_boxed",
    "register_answer_reader",
]
