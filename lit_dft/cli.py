"""The ``lit-dft`` command: LightningCLI's fit/validate/test/predict, plus ``export`` and ``plot-polarization``.

It is ``lit-dft fit``, not ``lightning fit``: since Lightning 2.5.1 the ``lightning`` command
belongs to Lightning's cloud SDK.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
from pathlib import Path
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_dft.callbacks import ModelCheckpoint
from lit_dft.checkpoints import check_checkpoint, is_local_checkpoint_path
from lit_dft.data import MathDataModule
from lit_dft.errors import LitDFTError
from lit_dft.export import ensure_writable_dir
from lit_dft.module import CausalLMModule
from lit_dft.strategies import register_strategies

# A full disk, a quota, a read-only or forbidden folder: one line, whichever save hits it.
_STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class LitDFTCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.tokenizer_name_or_path")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """``fit`` whose config names no checkpoint callback gets lit_dft's ``ModelCheckpoint`` instead of
        Lightning's default: ``last.ckpt`` holds the final state whatever ends the run (``max_steps`` between
        validations, SIGTERM from a scheduler, Ctrl-C, an error), so ``--ckpt_path last`` resumes."""
        fit = self.subcommand == "fit"
        # read before the Trainer adds its default callbacks to this very list
        configured = list(self.config_init["fit"]["trainer"].get("callbacks") or []) if fit else []
        trainer = super().instantiate_trainer(**kwargs)
        if fit and not any(isinstance(c, LightningModelCheckpoint) for c in configured):
            trainer.callbacks = [
                ModelCheckpoint() if c is trainer.checkpoint_callback else c for c in trainer.callbacks
            ]
        return trainer

    def before_fit(self) -> None:
        """Fail before training, not at the first save hours later, when checkpoints cannot be written."""
        trainer = self.trainer
        default = trainer.loggers[0].save_dir if trainer.loggers else None  # where Lightning puts them
        for callback in trainer.checkpoint_callbacks:
            folder = str(callback.dirpath or default or trainer.default_root_dir)
            if _is_local_file_protocol(folder):
                ensure_writable_dir(folder, what="checkpoints")

    def after_fit(self) -> None:
        last = self.trainer.checkpoint_callback.last_model_path if self.trainer.checkpoint_callback else ""
        if last and self.trainer.is_global_zero:
            export = f"lit-dft export {last} OUT_DIR" if Path(last).is_file() else "(a sharded folder)"
            print(f"Final weights: {last}\n  resume: --ckpt_path last    export: {export}")

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` (one line for a missing, empty or truncated file), and take nothing from it but
        the weights: Lightning's default here overwrites the model's settings from the command line and config
        (``--model.generation.num_samples 16`` for ``test``, say) with the ones saved in the checkpoint, without a word."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path is not None and is_local_checkpoint_path(path):
            check_checkpoint(path)


def _export(argv: list[str]) -> None:
    from lit_dft.export import export_checkpoint

    parser = argparse.ArgumentParser(prog="lit-dft export", description="Export a checkpoint to Hugging Face format.")
    parser.add_argument("ckpt_path", help="checkpoint written by lit-dft fit")
    parser.add_argument("out_dir", help="folder for the model and tokenizer (from_pretrained loads it)")
    args = parser.parse_args(argv)
    print(f"Exported to {export_checkpoint(args.ckpt_path, args.out_dir)}")


def main(argv: list[str] | None = None) -> None:
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # data fields document themselves
    args = sys.argv[1:] if argv is None else argv
    LitDFTError.last_message = None
    try:
        if args[:1] == ["export"]:
            _export(args[1:])
            return
        if args[:1] == ["plot-polarization"]:
            from lit_dft.plot import main as plot_main

            plot_main(args[1:])
            return
        register_strategies()
        LitDFTCLI(
            CausalLMModule,
            MathDataModule,
            args=argv,  # None: LightningCLI reads sys.argv itself
            seed_everything_default=42,
            save_config_kwargs={"overwrite": True},
        )
    except ValueError as error:  # LitDFTError, or a parser's error that quotes one
        message = str(error) if isinstance(error, LitDFTError) else LitDFTError.quoted_in(error)
        if message is None:
            raise
        print(f"lit-dft: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except SIGTERMException:
        print("lit-dft: stopped by SIGTERM", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None
    except OSError as error:
        if error.errno not in _STORAGE_ERRORS:
            raise
        print(f"lit-dft: error: {error.strerror}: {error.filename or 'a checkpoint or output file'}", file=sys.stderr)
        raise SystemExit(2) from None
