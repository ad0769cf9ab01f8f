"""Math evaluation: answer extraction, equivalence checking, accuracy metrics."""

from lit_dft.evaluation.answers import extract_answer, gsm8k_answer, last_boxed
from lit_dft.evaluation.checking import AnswerChecker, Verdict
from lit_dft.evaluation.metrics import MathAccuracy

__all__ = ["AnswerChecker", "MathAccuracy", "Verdict", "extract_answer", "gsm8k_answer", "last_boxed"]
