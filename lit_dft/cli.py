"""The ``lit-dft`` command: LightningCLI's fit/validate/test/predict, plus ``export`` and ``plot-polarization``.

It is ``lit-dft fit``, not ``lightning fit``: since Lightning 2.5.1 the ``lightning`` command
belongs to Lightning's cloud SDK.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_dft.checkpoints import LIGHTNING_CKPT_NAMES, check_checkpoint
from lit_dft.data import MathDataModule
from lit_dft.errors import LitDFTError
from lit_dft.module import CausalLMModule


class LitDFTCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.tokenizer_name_or_path")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """``fit`` without a checkpoint callback of its own gets one that also saves when the run is interrupted
        (SIGTERM from a scheduler, an exception) and keeps ``last.ckpt``, so ``--ckpt_path last`` resumes."""
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "fit" and trainer.checkpoint_callback is not None:
            default = trainer.checkpoint_callback
            if default.save_last is None and not default.save_on_exception and type(default) is ModelCheckpoint:
                default.save_last = True
                default.save_on_exception = True
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` (one line for a missing, empty or truncated file), and take nothing from it but
        the weights: Lightning's default here overwrites the model's settings from the command line and config
        (``--model.num_samples 16`` for ``test``, say) with the ones saved in the checkpoint, without a word."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path is not None and path not in LIGHTNING_CKPT_NAMES:
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
    try:
        if args[:1] == ["export"]:
            _export(args[1:])
            return
        if args[:1] == ["plot-polarization"]:
            from lit_dft.plot import main as plot_main

            plot_main(args[1:])
            return
        LitDFTCLI(
            CausalLMModule,
            MathDataModule,
            args=argv,  # None: LightningCLI reads sys.argv itself
            seed_everything_default=42,
            save_config_kwargs={"overwrite": True},
        )
    except LitDFTError as error:
        print(f"lit-dft: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except SIGTERMException:
        print("lit-dft: stopped by SIGTERM", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None
