from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lit_dft.models import TINY_MODEL, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def micro_llama(
    vocab_size: int = 64, dtype: torch.dtype = torch.float64, tied: bool = True, seed: int = 0
) -> LlamaForCausalLM:
    """A very small Llama for exact-arithmetic tests (float64 by default)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).to(dtype).train()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"tests need the shared data folder at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(TINY_MODEL)


_SMOKE_RUNS: dict[str, Path] = {}


def smoke_run_dir(loss: str, tmp_path_factory) -> Path:
    """``lit-dft fit --config configs/smoke.yaml --model.loss LOSS`` into a fresh folder, once per session."""
    from lit_dft.cli import main

    if loss not in _SMOKE_RUNS:
        run = tmp_path_factory.mktemp(loss)
        main(["fit", "--config", SMOKE, f"--model.loss={loss}", f"--trainer.default_root_dir={run}"])
        _SMOKE_RUNS[loss] = run
    return _SMOKE_RUNS[loss]


@pytest.fixture(scope="session", params=["sft", "dft"])
def smoke_run(request, tmp_path_factory) -> tuple[str, Path]:
    """(loss, folder) of a smoke run with that objective."""
    return request.param, smoke_run_dir(request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def dft_smoke_run(tmp_path_factory) -> tuple[str, Path]:
    """("dft", folder): for tests whose subject does not depend on the objective."""
    return "dft", smoke_run_dir("dft", tmp_path_factory)
