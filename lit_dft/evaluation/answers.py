"""Final answers from solution text: the last ``\\boxed{...}``, GSM8K's ``#### n``, "the answer is ..."."""

from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_IS = re.compile(r"the (?:final )?answer is[:\s]*\$?([^\n$]+?)\$?\s*\.?\s*$", re.IGNORECASE | re.MULTILINE)


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


def gsm8k_answer(text: str) -> str | None:
    """The number after GSM8K's final ``####``, without thousands separators."""
    if "####" not in text:
        return None
    answer = text.rsplit("####", 1)[1].strip().replace(",", "")
    return answer or None


def extract_answer(text: str) -> str | None:
    """Best-effort final answer of a generated or reference solution."""
    for extract in (last_boxed, gsm8k_answer):
        answer = extract(text)
        if answer:
            return answer
    matches = _ANSWER_IS.findall(text)
    return matches[-1].strip() if matches else None
