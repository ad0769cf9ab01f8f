"""Final answers from solution text, by named readers: the last ``\\boxed{...}``, GSM8K's ``#### n``, "the answer
is ...". One registry serves the data presets (``answer_format``), training targets and evaluation."""

from __future__ import annotations

import re
from collections.abc import Callable

from lit_dft.errors import LitDFTError

AnswerReader = Callable[[str], "str | None"]
"""Reads the final answer from a text; None when the text states none."""

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_IS = re.compile(r"the (?:final )?answer is\s*:?(.*)$", re.IGNORECASE | re.MULTILINE)
_GSM8K_MARKER = "####"


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}``, nested braces included."""
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i].strip()
    return None


def _gsm8k_final(text: str) -> tuple[str, str] | None:
    """(the text before GSM8K's last ``####``, the answer after it), or None."""
    head, marker, answer = text.rpartition(_GSM8K_MARKER)
    return (head, answer.strip()) if marker and answer.strip() else None


def gsm8k_answer(text: str) -> str | None:
    """The number after GSM8K's final ``####``, without thousands separators."""
    final = _gsm8k_final(text)
    return (final[1].replace(",", "") or None) if final else None


def gsm8k_to_boxed(solution: str) -> str:
    """Rewrite GSM8K's closing ``#### 18`` as ``\\boxed{18}`` so training targets and evaluation agree (a
    solution whose ``####`` is not on its last line is left as it is)."""
    final = _gsm8k_final(solution)
    if final is None or "\n" in final[1]:
        return solution
    head, answer = final
    return head.removesuffix("\n") + f"\nThe final answer is $\\boxed{{{answer}}}$."


def answer_is(text: str) -> str | None:
    """The rest of the line after the last "the answer is" (or "the final answer is"), without a final period
    or the ``$...$`` around it; None when nothing but punctuation follows."""
    matches = _ANSWER_IS.findall(text)
    answer = matches[-1].strip().removesuffix(".").strip() if matches else ""
    if answer.startswith("$") and answer.endswith("$") and answer.count("$") == 2:
        answer = answer[1:-1].strip()
    return answer if any(c.isalnum() for c in answer) else None


def _as_is(text: str) -> str | None:
    return text.strip() or None


ANSWER_READERS: dict[str, AnswerReader] = {
    "text": _as_is,
    "boxed": last_boxed,
    "gsm8k": gsm8k_answer,
    "answer_is": answer_is,
}
"""Readers by name: a preset's ``answer_format`` is one of these names (or ``list``)."""


def register_answer_reader(name: str, reader: AnswerReader) -> None:
    """Make ``reader`` a preset ``answer_format`` by ``name``."""
    ANSWER_READERS[name] = reader


def answer_reader(name: str) -> AnswerReader:
    if name not in ANSWER_READERS:
        raise LitDFTError(
            f"Unknown answer_format {name!r}. Known: {', '.join(sorted(ANSWER_READERS))}, list; "
            "or add one with lit_dft.evaluation.register_answer_reader"
        )
    return ANSWER_READERS[name]


def extract_answer(text: str) -> str | None:
    """Best-effort final answer of a generated or reference solution: boxed, then GSM8K's, then "the answer is"."""
    for name in ("boxed", "gsm8k", "answer_is"):
        answer = ANSWER_READERS[name](text)
        if answer:
            return answer
    return None
