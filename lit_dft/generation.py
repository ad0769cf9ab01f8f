"""Answering benchmark problems: batched sampling with a KV cache, answer extraction, checking."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from lit_dft.batch import Prediction, PromptBatch
from lit_dft.evaluation.answers import extract_answer
from lit_dft.evaluation.checking import AnswerChecker, Verdict
from lit_dft.strategies import is_sharded

_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end|>", "<end_of_turn>")


@dataclass(frozen=True)
class GenerationArgs:
    """How benchmark answers are generated (the paper: k=16 samples at temperature 1.0)."""

    max_new_tokens: int = 1024
    """Generated tokens per answer at most."""
    num_samples: int = 1
    """Answers per problem, k: accuracy is their mean (mean@k); pass@k is logged too."""
    temperature: float = 0.0
    """Sampling temperature; 0 decodes greedily (one answer per problem)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    backend: Literal["hf", "vllm"] = "hf"
    """``hf``: Hugging Face ``generate``, batched with a KV cache. ``vllm``: a vLLM engine over the module's weights
    (``pip install 'lit-dft[vllm]'``; one process, ``trainer.devices: 1``), same prompts, stop tokens and sampling."""
    vllm_args: dict[str, Any] = field(default_factory=dict)
    """More ``vllm.LLM`` arguments, e.g. {gpu_memory_utilization: 0.5, tensor_parallel_size: 2, dtype: bfloat16}."""


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS and the end-of-turn tokens this tokenizer knows, so chat models stop after their answer."""
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in _END_OF_TURN if token in vocab)
    return sorted(i for i in ids if i is not None)


def special_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's special tokens and the stop tokens: what ``protect_special_tokens`` trains with SFT."""
    return sorted(set(tokenizer.all_special_ids) | set(stop_token_ids(model, tokenizer)))


class _StopWhen(StoppingCriteria):
    """Ends generation at the next token once ``should_stop()`` is true (a scheduler's SIGTERM, say)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        return torch.full((input_ids.shape[0],), self.should_stop(), dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    batch: PromptBatch,
    sampling: GenerationArgs,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[str]:
    """``num_samples`` completions per prompt (problem-major order), decoded without special tokens.

    ``should_stop`` is polled after every token; when it turns true the completions end where they are.
    """
    prompts = batch.input_ids
    sample = sampling.temperature > 0
    output = model.generate(
        input_ids=prompts,
        attention_mask=batch.attention_mask,
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
        stopping_criteria=StoppingCriteriaList([_StopWhen(should_stop)]),
    )
    return tokenizer.batch_decode(output[:, prompts.shape[1] :], skip_special_tokens=True)


def score(
    texts: list[str], batch: PromptBatch, num_samples: int, checker: AnswerChecker
) -> tuple[Tensor, list[Prediction]]:
    """Correctness ``(counted problems, k)`` and one prediction per sample of a counted problem.

    Problems marked not ``counted`` (the padding that gives every rank the same number of batches) are skipped.
    """
    counted = [i for i, keep in enumerate(batch.counted) if keep]
    correct = torch.zeros(len(counted), num_samples, dtype=torch.bool)
    predictions = []
    for row, i in enumerate(counted):
        for j in range(num_samples):
            text = texts[i * num_samples + j]
            answer = extract_answer(text) if text.strip() else None
            verdict = (
                checker.check(answer, batch.answers[i], batch.significant_figures)
                if text.strip()
                else Verdict(False, "empty generation")
            )
            correct[row, j] = verdict.correct
            predictions.append(
                Prediction(
                    batch.benchmark,
                    batch.ids[i],
                    batch.questions[i],
                    j,
                    batch.answers[i],
                    text,
                    answer,
                    verdict.correct,
                    verdict.reason,
                )
            )
    return correct, predictions
