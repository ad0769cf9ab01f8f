"""The layering: data, loss and callbacks meet only in ``lit_dft.batch``; none reaches into another."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lit_dft"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize(
    "folder, forbidden",
    [
        ("callbacks", ("lit_dft.data",)),
        ("data", ("lit_dft.module", "lit_dft.token_loss", "lit_dft.callbacks", "lit_dft.generation")),
        ("evaluation", ("lit_dft.data", "lit_dft.module", "lit_dft.callbacks")),
    ],
)
def test_packages_import_only_the_contracts_of_the_others(folder, forbidden):
    for path in sorted((PACKAGE / folder).glob("*.py")):
        reached = [name for name in _imports(path) if name.startswith(forbidden)]
        assert not reached, f"{path.name} imports {reached}"


def test_no_magic_keys_or_label_shifts_outside_the_batch_types():
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for pattern in ('"flat_log_probs"', '"prompt_input_ids"', '["labels"][:, 1:]', '"target_log_probs"'):
            assert pattern not in text, f"{path.relative_to(PACKAGE)} uses {pattern}"
    assert "labels[:, 1:]" in (PACKAGE / "batch.py").read_text()  # the one place the shift is made
