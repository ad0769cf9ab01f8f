"""Answering with vLLM instead of Hugging Face ``generate`` (``model.generation.backend: vllm``, after
``pip install 'lit-dft[vllm]'``): the same prompt token ids, stop tokens and sampling settings, from the weights the
module holds, so ``test``/``predict`` and sampling give the same kind of answers, faster on a GPU.

vLLM is imported only when this backend is chosen. The module's weights (a checkpoint's, a LoRA model's with its
adapters merged, a GGUF model's) are written to a temporary Hugging Face folder that the engine loads, removed
once it has.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
from typing import Any

import torch

from lit_dft.batch import PromptBatch
from lit_dft.errors import LitDFTError
from lit_dft.export import export_pretrained
from lit_dft.generation import GenerationArgs, stop_token_ids

_OURS = ("model", "tokenizer", "seed")  # vllm.LLM arguments lit_dft sets itself


def _default_memory_share() -> dict[str, float]:
    """vLLM takes 90% of the GPU by default and refuses to start when less is free; the module's own copy of the
    model is on the GPU too, so take 90% of what is free."""
    if not torch.cuda.is_available():
        return {}
    free, total = torch.cuda.mem_get_info()
    return {"gpu_memory_utilization": round(0.9 * free / total, 3)}


def _import_vllm():
    try:
        return importlib.import_module("vllm")
    except ImportError:
        raise LitDFTError("model.generation.backend 'vllm' needs vLLM: pip install 'lit-dft[vllm]'") from None


class VLLMGenerator:
    """A vLLM engine over the module's weights that answers a :class:`PromptBatch` as ``generation.generate`` does:
    ``num_samples`` completions per prompt in problem-major order, decoded without special tokens."""

    def __init__(self, model, tokenizer, lora=None, seed: int = 0, engine_args: dict[str, Any] | None = None) -> None:
        self.vllm = _import_vllm()
        self.tokenizer = tokenizer
        self.stop_ids = stop_token_ids(model, tokenizer)
        engine_args = _default_memory_share() | (engine_args or {})
        if set(engine_args) & set(_OURS):
            raise LitDFTError(
                f"model.generation.vllm_args cannot set {', '.join(sorted(set(engine_args) & set(_OURS)))}: "
                "lit_dft gives vLLM the module's weights and seed_everything's seed"
            )
        folder = tempfile.mkdtemp(prefix="lit_dft_vllm_")
        try:
            export_pretrained(model, tokenizer, folder, lora=lora)  # its own errors are one line already
            try:
                self.engine = self.vllm.LLM(model=folder, tokenizer=folder, seed=seed, **engine_args)
            except (ValueError, RuntimeError, TypeError) as error:  # out of memory, a misspelled argument: vLLM's words
                raise LitDFTError(f"vLLM could not start: {error}") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # loaded: a 7B model's float32 copy need not stay on disk

    def sampling_params(self, sampling: GenerationArgs):
        greedy = sampling.temperature == 0
        return self.vllm.SamplingParams(
            n=sampling.num_samples,
            temperature=sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            stop_token_ids=self.stop_ids,
        )

    def __call__(self, batch: PromptBatch, sampling: GenerationArgs) -> list[str]:
        prompts = [
            {"prompt_token_ids": ids[mask.to(torch.bool)].tolist()}  # the left padding off
            for ids, mask in zip(batch.input_ids.cpu(), batch.attention_mask.cpu())
        ]
        requests = self.engine.generate(prompts, self.sampling_params(sampling), use_tqdm=False)
        completions = [list(c.token_ids) for r in requests for c in sorted(r.outputs, key=lambda c: c.index)]
        return self.tokenizer.batch_decode(completions, skip_special_tokens=True)
