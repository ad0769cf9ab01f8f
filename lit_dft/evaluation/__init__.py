"""Answer extraction and checking for math benchmarks."""

from lit_dft.evaluation.answers import extract_answer, gsm8k_answer, last_boxed

__all__ = ["extract_answer", "gsm8k_answer", "last_boxed"]
