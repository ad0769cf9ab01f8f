"""Checkpoint files checked before use: a missing, empty or truncated file is one clear line, not a traceback."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from lit_dft.errors import LitDFTError

_REGISTRY = re.compile(r"^registry(:|$)", re.IGNORECASE)


def is_local_checkpoint_path(path: str) -> bool:
    """Whether ``path`` names a local file or folder, not a name Lightning resolves itself (``last``, ``best``,
    ``hpc``, ``registry:...``) or a remote URL (``s3://...``)."""
    return path not in ("last", "best", "hpc") and not _REGISTRY.match(path) and "://" not in path


def check_checkpoint(path: str | Path) -> Path:
    """A complete checkpoint: ``torch.save``'s zip archive (its index is at the end, so a truncated file has
    none) or a sharded checkpoint folder (FSDP2 ``save_distributed_checkpoint``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise LitDFTError(f"Checkpoint not found: {path}")
    if path.is_dir():
        if not (path / ".metadata").is_file():
            raise LitDFTError(f"{path} is a folder but not a sharded checkpoint (no .metadata inside)")
        return path
    if path.stat().st_size == 0:
        raise LitDFTError(f"Checkpoint {path} is empty (0 bytes): the save was interrupted; use an earlier one")
    if not zipfile.is_zipfile(path):
        raise LitDFTError(f"Checkpoint {path} is truncated or not a torch checkpoint; use an earlier one")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a single-file checkpoint on the CPU with ``weights_only=True`` (no arbitrary unpickling)."""
    path = check_checkpoint(path)
    if path.is_dir():
        raise LitDFTError(f"{path} is a sharded checkpoint folder; export reads a single .ckpt file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise LitDFTError(f"Cannot read checkpoint {path} safely: {reason}") from None


def plain_config(config: Any) -> dict[str, Any]:
    """A model's config as plain values, which ``torch.load(weights_only=True)`` reads back (``to_dict()`` keeps
    enums), without a GGUF source's ``quantization_config``: the weights a checkpoint holds are dequantized."""
    values = json.loads(config.to_json_string(use_diff=False))
    values.pop("quantization_config", None)
    return values


FINGERPRINT = "frozen_fingerprint"  # the checkpoint's key for the fingerprint of the weights it leaves out
_FINGERPRINT_SAMPLES = 4096  # elements of each frozen tensor in the fingerprint


def fingerprint(tensors: list[torch.Tensor]) -> float:
    """A cheap checksum of frozen weights (a reference model, a LoRA model's base) that a checkpoint leaves out:
    an evenly strided sample of each tensor, summed in float64."""
    total = 0.0
    for tensor in tensors:
        flat = tensor.detach().reshape(-1)
        total += float(flat[:: max(1, flat.numel() // _FINGERPRINT_SAMPLES)].double().sum())
    return total


def check_fingerprint(saved: float | None, rebuilt: list[torch.Tensor], source: str) -> None:
    """Refuse frozen weights rebuilt from ``source`` that are not those the checkpoint was trained with."""
    if saved is None:  # a checkpoint that kept every weight
        return
    now = fingerprint(rebuilt)
    if abs(now - saved) > 1e-6 * max(1.0, abs(saved)):
        raise LitDFTError(
            f"The frozen weights rebuilt from {source!r} are not those the checkpoint was trained with (fingerprint "
            f"{saved:.6g}, now {now:.6g}): load the same model, with the same dtype"
        )
