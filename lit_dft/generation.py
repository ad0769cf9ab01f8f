"""Answering benchmark problems: batched sampling with a KV cache, answer extraction, checking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_dft.evaluation.answers import extract_answer
from lit_dft.evaluation.checking import AnswerChecker, Verdict
from lit_dft.strategies import is_sharded

_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end|>", "<end_of_turn>")


@dataclass
class Sampling:
    """How answers are generated; ``CausalLMModule`` documents each field (the paper: k=16 at temperature 1.0)."""

    max_new_tokens: int = 1024
    num_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS and the end-of-turn tokens this tokenizer knows, so chat models stop after their answer."""
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in _END_OF_TURN if token in vocab)
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch: dict[str, Any], sampling: Sampling
) -> list[str]:
    """``num_samples`` completions per prompt (problem-major order), decoded without special tokens."""
    prompts: Tensor = batch["prompt_input_ids"]
    sample = sampling.temperature > 0
    output = model.generate(
        input_ids=prompts,
        attention_mask=batch["prompt_attention_mask"],
        max_new_tokens=sampling.max_new_tokens,
        do_sample=sample,
        temperature=sampling.temperature if sample else None,
        top_p=sampling.top_p if sample else None,
        top_k=None,
        num_return_sequences=sampling.num_samples,
        eos_token_id=stop_token_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        synced_gpus=is_sharded(model),  # sharded layers: every rank runs forwards until all ranks are done
    )
    return tokenizer.batch_decode(output[:, prompts.shape[1] :], skip_special_tokens=True)


def score(
    texts: list[str], batch: dict[str, Any], num_samples: int, checker: AnswerChecker
) -> tuple[Tensor, list[dict]]:
    """Correctness ``(problems, k)`` and one prediction record per sample."""
    problems = len(batch["ids"])
    correct = torch.zeros(problems, num_samples, dtype=torch.bool)
    records = []
    for i in range(problems):
        for j in range(num_samples):
            text = texts[i * num_samples + j]
            answer = extract_answer(text) if text.strip() else None
            verdict = checker.check(answer, batch["answers"][i]) if text.strip() else Verdict(False, "empty generation")
            correct[i, j] = verdict.correct
            records.append(
                {
                    "benchmark": batch["benchmark"],
                    "id": batch["ids"][i],
                    "sample": j,
                    "gold": batch["answers"][i],
                    "generation": text,
                    "extracted": answer,
                    "correct": verdict.correct,
                    "reason": verdict.reason,
                }
            )
    return correct, records
