"""Presets: declarative records saying where a math data set lives and how to read its rows.

A preset is data, not code. Its source is a local file (``data.path``), a hub data set (``hub_id``) or a
Python package (``package``, e.g. CHAMP's). Add one in YAML instead of a name::

    data:
      preset: {question: prompt, solution: completion, answer: final}
      path: my_data.jsonl

or in Python with ``PRESETS["mine"] = Preset(...)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from string import Formatter
from typing import Any, Literal

from lit_dft.errors import LitDFTError
from lit_dft.evaluation.answers import answer_reader

Source = Literal["local", "hub", "package"]


@dataclass(frozen=True)
class Preset:
    """How to read one data set."""

    question: str = "question"
    """Field with the problem statement, or a template joining fields, e.g. ``"{Body} {Question}"``."""
    solution: str | None = "solution"
    """Field with the reference solution, the training target (a string or a list of steps). None: evaluation only."""
    answer: str | None = "answer"
    """Field the final answer is read from (see ``answer_format``). None: no gold answer. A unit in parentheses
    at the end of a gold answer ("9 (apples)") is dropped, so a boxed 9 counts as correct."""
    answer_format: str = "text"
    """How to read the answer field: a reader of ``lit_dft.evaluation.ANSWER_READERS`` (``text`` as is, ``boxed``
    its last \\boxed{}, ``gsm8k`` after ``####``, ``answer_is`` after "The answer is", or one you registered), or
    ``list``: a list of answers, each as text, that must all match."""
    significant_figures: bool = False
    """Match numeric answers at the precision the gold states (``4.5e33``: two figures, so ``4.52e33`` is correct);
    for measured quantities (Minerva Math's physics). Off: numbers must be equal."""
    messages: str | None = None
    """Chat column (list of {role, content}); when set, question and solution come from its user and
    assistant turns."""
    hub_id: str | None = None
    """Hugging Face hub data set used when no local ``path`` is given."""
    package: str | None = None
    """Python package the rows come from when no local ``path`` is given (``champ-dataset``)."""
    hub_config: str | None = None
    """Configuration name of the hub data set (e.g. ``main`` for GSM8K)."""
    split: str = "train"
    """Split to read from the hub."""

    def __post_init__(self) -> None:
        if self.answer_format != "list":
            answer_reader(self.answer_format)  # an unknown name fails here, with the known ones
        if self.hub_id and self.package:
            raise LitDFTError(f"A preset reads from the hub ({self.hub_id}) or a package ({self.package}), not both")

    @property
    def source(self) -> Source:
        """Where the rows come from when no local path is given; ``local``: only from a path."""
        return "hub" if self.hub_id else "package" if self.package else "local"


PRESETS: dict[str, Preset] = {
    "numina": Preset(question="problem", answer="solution", answer_format="boxed", hub_id="AI-MO/NuminaMath-CoT"),
    "gsm8k": Preset(solution="answer", answer_format="gsm8k", hub_id="openai/gsm8k", hub_config="main"),
    "math": Preset(
        question="problem", answer="solution", answer_format="boxed", hub_id="DigitalLearningGmbH/MATH-lighteval"
    ),
    "math500": Preset(question="problem", hub_id="HuggingFaceH4/MATH-500", split="test"),
    "metamath": Preset(
        question="query",
        solution="response",
        answer="response",
        answer_format="answer_is",
        hub_id="meta-math/MetaMathQA",
    ),
    "minerva_math": Preset(
        question="problem", answer="solution", answer_format="boxed", split="test", significant_figures=True
    ),
    "olympiadbench": Preset(answer="final_answer", answer_format="list", split="test"),
    "aime24": Preset(question="problem", hub_id="HuggingFaceH4/aime_2024"),
    "amc23": Preset(solution=None, split="test"),
    "champ": Preset(package="champ-dataset"),  # rows already in this schema
    # a model's own answers, written by lit_dft.callbacks.SampleWriter (``lit-dft predict --config configs/offline_sample.yaml``)
    "sampled": Preset(solution="response", answer="gold", answer_format="list"),
}


def resolve_preset(preset: str | Preset | dict[str, Any]) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if isinstance(preset, dict):
        return Preset(**preset)
    if preset not in PRESETS:
        raise LitDFTError(f"Unknown preset {preset!r}. Known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[preset]


def question_columns(preset: Preset) -> list[str]:
    """The fields the question comes from: one field, or those a template names."""
    if "{" not in preset.question:
        return [preset.question]
    try:
        fields = [name for _, name, _, _ in Formatter().parse(preset.question) if name is not None]
    except ValueError as error:
        raise LitDFTError(f"Question template {preset.question!r} is malformed: {error}") from None
    if not fields or not all(fields):
        raise LitDFTError(f"Question template {preset.question!r} names no field, e.g. '{{Body}} {{Question}}'")
    return list(dict.fromkeys(fields))


def required_columns(preset: Preset, solution: bool = True) -> list[str]:
    """The columns a data set must have for this preset (without the solution for evaluation)."""
    columns = [preset.messages] if preset.messages else question_columns(preset)
    columns += [preset.solution] if solution and preset.solution and not preset.messages else []
    columns += [preset.answer] if preset.answer else []
    return list(dict.fromkeys(columns))  # a field can serve twice (GSM8K's answer is also its solution)


def _text(value: Any, numbers: bool = False) -> str | None:
    """A non-empty string, joining lists of steps (and numbers as text if ``numbers``); None otherwise."""
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = "\n".join(value)
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _from_messages(messages: Any) -> tuple[str | None, str | None]:
    if not isinstance(messages, list):
        return None, None
    user = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    assistant = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    return (_text(user[0]) if user else None), (_text(assistant[-1]) if assistant else None)


_TRAILING_UNIT = re.compile(r"^(?P<value>.*\S)\s+\((?P<unit>[A-Za-z][A-Za-z .]*)\)$")


def strip_unit(answer: str) -> str:
    """``9 (apples)`` -> ``9``: a parenthesised unit made of words after the value is not part of the answer."""
    match = _TRAILING_UNIT.match(answer.strip())
    return match["value"] if match else answer


def _question(row: dict[str, Any], preset: Preset) -> str | None:
    if "{" not in preset.question:
        return _text(row.get(preset.question))
    parts = {name: _text(row.get(name), numbers=True) for name in question_columns(preset)}
    return None if None in parts.values() else preset.question.format(**parts)


def gold_answers(preset: Preset, row: dict[str, Any]) -> list[str]:
    """The gold answers of a row (several only for ``list`` answers); empty when there is none."""
    if not preset.answer:
        return []
    value = row.get(preset.answer)
    if preset.answer_format == "list":
        values = value if isinstance(value, list) else [value]
        answers = [_text(v, numbers=True) for v in values]
        return [strip_unit(a) for a in answers] if answers and all(answers) else []
    text = _text(value, numbers=True)
    answer = answer_reader(preset.answer_format)(text) if text is not None else None
    return [strip_unit(answer)] if answer else []


def read_row(row: dict[str, Any], preset: Preset) -> dict[str, Any]:
    """Normalise a row to ``question``, ``solution``, ``answers`` and ``skip`` (why it is unusable, or "")."""
    if preset.messages:
        question, solution = _from_messages(row.get(preset.messages))
    else:
        question = _question(row, preset)
        solution = _text(row.get(preset.solution)) if preset.solution else ""
    skip = "" if question else "empty or non-string question"
    if not skip and solution is None:
        skip = "empty or non-string solution"
    return {"question": question or "", "solution": solution or "", "answers": gold_answers(preset, row), "skip": skip}
