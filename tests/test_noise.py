import logging
import os
import warnings

import pytest
import torch

from lit_dft.noise import silence_known_noise, verbose_requested
from tests.helpers import MicroModule

_LIGHTNING = logging.getLogger("lightning.pytorch.utilities.rank_zero")


@pytest.fixture
def restored_filters():
    filters = list(_LIGHTNING.filters)
    with warnings.catch_warnings():
        yield
    _LIGHTNING.filters[:] = filters


def test_known_third_party_messages_are_silenced_and_ours_still_show(restored_filters, caplog):
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")  # every warning shows, but for the filters installed next
        silence_known_noise()
        silence_known_noise()  # idempotent: main() may run several times in one process
        warnings.warn("'set_vital' is deprecated, please do not call", stacklevel=1)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning, stacklevel=1)
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        module = MicroModule()
        module.model.to(torch.bfloat16)
        module.on_fit_start()  # lit_dft's own warning about bf16 weights
        warnings.warn("some new deprecation", DeprecationWarning, stacklevel=1)
    messages = [str(w.message) for w in shown]
    assert sum(type(f).__name__ == "_DropMessages" for f in _LIGHTNING.filters) == 1
    assert len(messages) == 2 and messages[0].startswith("The trainable weights are torch.bfloat16")
    assert messages[1] == "some new deprecation"
    with caplog.at_level(logging.INFO, logger=_LIGHTNING.name):
        _LIGHTNING.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        _LIGHTNING.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_verbose_is_asked_by_flag_before_the_subcommand_or_environment(monkeypatch):
    monkeypatch.delenv("LIT_DFT_VERBOSE", raising=False)
    # after the subcommand it is Lightning's (Trainer.test(verbose=...)), left as it is
    assert verbose_requested(["test", "--verbose", "false"]) == (False, ["test", "--verbose", "false"])
    assert verbose_requested(["fit"]) == (False, ["fit"])
    monkeypatch.setenv("LIT_DFT_VERBOSE", "false")
    assert verbose_requested(["fit"]) == (False, ["fit"])
    monkeypatch.setenv("LIT_DFT_VERBOSE", "0")
    assert verbose_requested(["--verbose", "fit", "--config", "c.yaml"]) == (True, ["fit", "--config", "c.yaml"])
    assert os.environ["LIT_DFT_VERBOSE"] == "1", "the other ranks' processes inherit it"
