"""Checkpoint files checked before use: a missing, empty or truncated file is one clear line, not a traceback."""

from __future__ import annotations

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
