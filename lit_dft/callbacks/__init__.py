"""Callbacks for lit_dft runs."""

from lit_dft.callbacks.export import ExportOnFitEnd

__all__ = ["ExportOnFitEnd"]
