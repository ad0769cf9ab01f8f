"""Batching: training examples padded right with the prompt masked, benchmark prompts padded left."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lit_dft.batch import IGNORE_INDEX, PromptBatch, TrainingBatch


@dataclass
class PadCollator:
    """Pads ``input_ids`` right to the longest row (rounded up to ``pad_to_multiple_of``); the labels are the
    tokens from ``prompt_length`` on, none for a row marked ``counted: False`` (padding that evens out ranks).
    Rows with ``reference_log_probs`` (one per response token) give them at the labels' positions."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> TrainingBatch:
        longest = max(len(row["input_ids"]) for row in rows)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        with_reference = "reference_log_probs" in rows[0]
        reference = torch.zeros((len(rows), longest), dtype=torch.float32) if with_reference else None
        for i, row in enumerate(rows):
            ids = torch.as_tensor(row["input_ids"], dtype=torch.long)
            input_ids[i, : len(ids)] = ids
            attention_mask[i, : len(ids)] = 1
            if row.get("counted", True):
                labels[i, row["prompt_length"] : len(ids)] = ids[row["prompt_length"] :]
            if with_reference:
                reference[i, row["prompt_length"] : len(ids)] = torch.as_tensor(row["reference_log_probs"])
        positions = (labels[:, 1:].flatten() != IGNORE_INDEX).nonzero().flatten()
        return TrainingBatch(input_ids, attention_mask, labels, reference, positions)


@dataclass
class PromptCollator:
    """Left-pads prompts for batched generation and carries each problem's gold answers along."""

    pad_token_id: int
    benchmark: str
    significant_figures: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> PromptBatch:
        longest = max(len(row["prompt_ids"]) for row in rows)
        input_ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, row in enumerate(rows):
            ids = torch.as_tensor(row["prompt_ids"], dtype=torch.long)
            input_ids[i, longest - len(ids) :] = ids
            attention_mask[i, longest - len(ids) :] = 1
        return PromptBatch(
            input_ids,
            attention_mask,
            benchmark=self.benchmark,
            ids=[row["id"] for row in rows],
            questions=[row["question"] for row in rows],
            answers=[row["answers"] for row in rows],
            counted=[row.get("counted", True) for row in rows],
            significant_figures=self.significant_figures,
        )
