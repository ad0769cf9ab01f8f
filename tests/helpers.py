"""Test doubles shared by several test files (importable by spawned DDP workers)."""

import os
import subprocess
import sys

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader

from lit_dft.data.collate import PadCollator
from lit_dft.lora import LoraArgs
from lit_dft.models import TINY_MODEL, load_tokenizer
from lit_dft.module import CausalLMModule
from tests.conftest import ROOT, micro_llama


class SGDModule(CausalLMModule):
    """CausalLMModule with plain SGD (lr 1): a step moves the weights by -grad."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def MicroModule(loss: str = "dft", loss_chunk_size: int = 0, module_class: type = SGDModule, **kwargs):  # noqa: N802
    """A ``module_class`` around a float64 micro Llama (through the ``from_model`` seam), with the tiny model's
    tokenizer (ids below 64 are its first 64 tokens)."""
    model, tokenizer = micro_llama(), load_tokenizer(TINY_MODEL)
    return module_class.from_model(model, tokenizer, loss=loss, loss_chunk_size=loss_chunk_size, **kwargs)


MICRO_LORA = LoraArgs(r=4, alpha=8, dropout=0.0)


def randomise_adapters(model: torch.nn.Module, seed: int = 3) -> torch.nn.Module:
    """Give LoRA's B matrices random values: fresh adapters (B = 0) compute nothing and give A no gradient."""
    g = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = 0.1 * torch.randn(param.shape, generator=g, dtype=param.dtype)
    return model


def uneven_rows(n: int = 8, vocab: int = 64, seed: int = 1) -> list[dict]:
    """Rows whose lengths and prompt lengths differ, so micro-batches hold unequal target token counts."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 6 + (i * 5) % 17
        rows.append(
            {"input_ids": torch.randint(3, vocab, (length,), generator=g).tolist(), "prompt_length": 1 + (i * 3) % 5}
        )
    return rows


def loader(rows: list[dict], batch_size: int) -> DataLoader:
    return DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=PadCollator(pad_token_id=0))


def quiet_trainer(**kwargs) -> L.Trainer:
    """A CPU Trainer without checkpoints, progress bar or summary unless ``kwargs`` say otherwise."""
    defaults = {
        "accelerator": "cpu",
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**defaults, **kwargs})


def run_worker(module: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``python -m module args`` from the project root with ``env`` added: how the tests start processes of their own
    (several ranks, a crash)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
