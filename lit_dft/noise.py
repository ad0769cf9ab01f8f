"""Known-harmless third-party messages, silenced at the ``lit-dft`` entry so that what a run prints is its own.

Each filter names one exact message; nothing is silenced by category or module alone, so a new warning, and
every warning from lit_dft, still shows. ``lit-dft --verbose SUBCOMMAND ...`` (before the subcommand, whose own
``--verbose`` is Lightning's) or ``LIT_DFT_VERBOSE=1`` shows them all.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "LIT_DFT_VERBOSE"

# (the message's start as a regular expression, why it is harmless here)
_WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", "Lightning's own use of torch's pytree API"),
    (r"'set_vital' is deprecated", "torchdata's StatefulDataLoader calls a removed torch telemetry hook"),
    (r"`is_gradient_checkpointing` is deprecated", "peft reads transformers' old name; it works until v6"),
)
# Lightning's advertisements for its cloud products, logged at every run
_LOG_MESSAGES = ("💡 Tip: For seamless cloud",)


class _DropMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_LOG_MESSAGES)


def verbose_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether ``--verbose`` before the subcommand (or the environment) asks for every message, and the arguments
    without that flag. The environment is set too, so that the processes a launcher starts for the other ranks
    show every message as well."""
    flag = argv[:1] == ["--verbose"]
    if flag:
        os.environ[VERBOSE_ENV] = "1"
    verbose = os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return verbose, argv[1:] if flag else argv


def silence_known_noise() -> None:
    """Install the filters in this process (the processes a launcher starts for other ranks run ``lit-dft`` too)."""
    for message, _why in _WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    lightning = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropMessages) for f in lightning.filters):
        lightning.addFilter(_DropMessages())
