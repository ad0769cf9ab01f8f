"""lit_dft: fine-tune causal language models on math with SFT or Dynamic Fine-Tuning, in PyTorch Lightning."""

from lit_dft.data import MathDataModule, Preset
from lit_dft.module import CausalLMModule
from lit_dft.objectives import DFT, OBJECTIVES, SFT, TokenObjective, register_objective

__all__ = [
    "CausalLMModule",
    "DFT",
    "MathDataModule",
    "OBJECTIVES",
    "Preset",
    "SFT",
    "TokenObjective",
    "register_objective",
]
