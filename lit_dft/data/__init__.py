"""Math data: presets, sources, prompt formatting, collation and the DataModule."""

from lit_dft.data.collate import PadCollator, PromptCollator
from lit_dft.data.datamodule import MathDataModule
from lit_dft.data.formatting import BOXED_INSTRUCTION, PromptFormatter
from lit_dft.data.presets import PRESETS, Preset

__all__ = [
    "BOXED_INSTRUCTION",
    "MathDataModule",
    "PRESETS",
    "PadCollator",
    "Preset",
    "PromptCollator",
    "PromptFormatter",
]
