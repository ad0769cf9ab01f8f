"""Callbacks for lit_dft runs: token-probability histograms, the probe set, throughput, predictions, checkpoints,
export at the end of fit, TensorBoard's layout."""

from lit_dft.callbacks.checkpoint import ModelCheckpoint
from lit_dft.callbacks.export import ExportOnFitEnd
from lit_dft.callbacks.predictions import PredictionWriter
from lit_dft.callbacks.samples import SampleWriter
from lit_dft.callbacks.tensorboard import TensorBoardLayout
from lit_dft.callbacks.throughput import TokenThroughput
from lit_dft.callbacks.token_probs import ProbeTokenProbabilities, TokenProbabilityHistogram
from lit_dft.callbacks.token_stats import TokenCategories

__all__ = [
    "ExportOnFitEnd",
    "ModelCheckpoint",
    "PredictionWriter",
    "TensorBoardLayout",
    "ProbeTokenProbabilities",
    "SampleWriter",
    "TokenCategories",
    "TokenProbabilityHistogram",
    "TokenThroughput",
]
