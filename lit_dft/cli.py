"""The ``lit-dft`` command: LightningCLI's fit/validate/test/predict, plus ``export`` and ``plot-polarization``.

It is ``lit-dft fit``, not ``lightning fit``: since Lightning 2.5.1 the ``lightning`` command
belongs to Lightning's cloud SDK.
"""

from __future__ import annotations

import argparse
import sys

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI

from lit_dft.data import MathDataModule
from lit_dft.errors import LitDFTError
from lit_dft.module import CausalLMModule


class LitDFTCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.tokenizer_name_or_path")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")


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
