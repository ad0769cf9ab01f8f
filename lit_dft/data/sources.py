"""Raw rows from wherever they live: local files and folders, the hub, or the champ-dataset package."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import datasets

from lit_dft.data.presets import Preset
from lit_dft.errors import LitDFTError

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _json_error(path: Path, lineno: int, error: json.JSONDecodeError, what: str) -> LitDFTError:
    return LitDFTError(f"{path}:{lineno}: {what} ({error.msg.removesuffix(' at')} at column {error.colno})")


def _check_json(path: Path) -> None:
    """Fail on a malformed JSON file with its path and line, before pyarrow fails obscurely.

    Reads bytes line by line (any size), accepts a UTF-8 byte-order mark, skips blank lines.
    """
    rows = 0
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise LitDFTError(
                    f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1}); "
                    "save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            if rows == 0 and path.suffix == ".json" and line.lstrip().startswith("["):
                _check_json_array(path)
                return
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise _json_error(path, lineno, error, "malformed JSON line") from None
            if not isinstance(row, dict):
                raise LitDFTError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
            rows += 1
    if rows == 0:
        raise LitDFTError(f"{path}: no rows (the file is empty or holds only blank lines)")


def _check_json_array(path: Path) -> None:
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise _json_error(path, error.lineno, error, "malformed JSON") from None
    except UnicodeDecodeError as error:
        raise LitDFTError(f"{path}: not UTF-8 text (byte offset {error.start}); save the file as UTF-8") from None
    if not rows:
        raise LitDFTError(f"{path}: no rows (an empty JSON array)")


def load_local(path: str | Path) -> datasets.Dataset:
    """A ``.jsonl``/``.json``/``.parquet``/``.csv`` file, or a folder of files of one such type."""
    path = Path(path).expanduser()
    if not path.exists():
        raise LitDFTError(f"Data file or folder not found: {path}")
    files = sorted(p for p in path.rglob("*") if p.suffix in _BUILDERS) if path.is_dir() else [path]
    if not files:
        raise LitDFTError(f"No {'/'.join(_BUILDERS)} files in {path}")
    builders = {_BUILDERS.get(f.suffix) for f in files}
    if None in builders or len(builders) > 1:
        raise LitDFTError(f"Cannot read {path}: expected files of one type among {', '.join(_BUILDERS)}")
    builder = builders.pop()
    if builder == "json":
        for file in files:
            _check_json(file)
    try:
        rows = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except Exception as error:  # pyarrow, pandas and datasets raise many types for unreadable files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "corresponds to no data" in reason:
            raise LitDFTError(f"{path}: no rows") from None
        raise LitDFTError(f"Cannot read {path} as {builder}: {reason}") from None
    if len(rows) == 0:
        raise LitDFTError(f"{path}: no rows")
    return rows


def load_rows(path: str | None, preset: Preset, name: str, path_key: str = "data.path") -> datasets.Dataset:
    """The raw rows: from ``path`` when given, else from the preset's hub data set or package (``name`` and
    ``path_key`` say which data set and which setting in the message when there is neither)."""
    if path is not None:
        return load_local(path)
    if preset.source == "local":
        raise LitDFTError(
            f"{name}: no data source: the preset names no hub_id or package, so set {path_key} to a local file or folder"
        )
    if preset.source == "package":
        if preset.package not in PACKAGES:
            raise LitDFTError(f"{name}: unknown package source {preset.package!r}; known: {', '.join(PACKAGES)}")
        return PACKAGES[preset.package]()
    return load_hub(preset)


def load_hub(preset: Preset) -> datasets.Dataset:
    """The preset's hub data set (needs network, or a warm Hugging Face cache)."""
    try:
        return datasets.load_dataset(preset.hub_id, preset.hub_config, split=preset.split)
    except Exception as error:  # the hub raises many types: connection, auth, missing repo
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LitDFTError(f"Cannot load {preset.hub_id!r} from the hub ({reason})") from None


def load_champ() -> datasets.Dataset:
    """CHAMP's 270 problems: the question, the solution steps joined as the target, the final answer."""
    spec = importlib.util.find_spec("champ_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise LitDFTError("The champ preset needs the champ-dataset package: pip install --no-deps champ-dataset")
    file = Path(next(iter(spec.submodule_search_locations))) / "dataset_files" / "v0.json"
    problems = json.loads(file.read_text(encoding="utf-8"))["problems"]
    rows = [
        {
            "id": problem["identifier"],
            "question": problem["_text"],
            "solution": [step["_text"] for step in problem["solution"]["steps"]],
            "answer": problem["_answer"],
        }
        for problem in problems.values()
    ]
    return datasets.Dataset.from_list(rows)


PACKAGES: dict[str, Callable[[], datasets.Dataset]] = {"champ-dataset": load_champ}
"""Package sources by the name a preset's ``package`` gives."""
