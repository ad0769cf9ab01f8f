"""The ``lit-dft`` command: LightningCLI's fit/validate/test/predict, plus ``export`` and ``plot-polarization``.

It is ``lit-dft fit``, not ``lightning fit``: since Lightning 2.5.1 the ``lightning`` command
belongs to Lightning's cloud SDK.
"""

from __future__ import annotations

import argparse
import errno
import functools
import re
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
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lit_dft.callbacks import ModelCheckpoint, TensorBoardLayout
from lit_dft.callbacks.progress import step_progress_bar
from lit_dft.checkpoints import check_checkpoint, is_local_checkpoint_path
from lit_dft.data import MathDataModule
from lit_dft.errors import LitDFTError
from lit_dft.export import ensure_writable_dir
from lit_dft.module import CausalLMModule
from lit_dft.noise import silence_known_noise, verbose_requested
from lit_dft.strategies import register_strategies
from lit_dft.summary import run_summary

# A full disk, a quota, a read-only or forbidden folder: one line, whichever save hits it.
_STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class LitDFTCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.tokenizer_name_or_path")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """``fit`` whose config names no checkpoint callback gets lit_dft's ``ModelCheckpoint`` instead of
        Lightning's default: ``last.ckpt`` holds the final state whatever ends the run (``max_steps`` between
        validations, SIGTERM from a scheduler, Ctrl-C, an error), so ``--ckpt_path last`` resumes. Lightning's
        default progress bar becomes one that counts steps (``lit_dft.callbacks.progress``), and ``fit`` writes
        TensorBoard's layout (``TensorBoardLayout``)."""
        fit = self.subcommand == "fit"
        # read before the Trainer adds its default callbacks to this very list
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init  # run=False: no subcommand
        configured = list(config["trainer"].get("callbacks") or [])
        trainer = super().instantiate_trainer(**kwargs)
        if fit and not any(isinstance(c, LightningModelCheckpoint) for c in configured):
            trainer.callbacks = [
                ModelCheckpoint() if c is trainer.checkpoint_callback else c for c in trainer.callbacks
            ]
        default_bar = trainer.progress_bar_callback
        if default_bar is not None and not any(c is default_bar for c in configured):  # a bar you chose stays
            trainer.callbacks = [step_progress_bar(c) if c is default_bar else c for c in trainer.callbacks]
        if fit and not any(isinstance(c, TensorBoardLayout) for c in trainer.callbacks):
            trainer.callbacks.append(TensorBoardLayout())
        return trainer

    def before_fit(self) -> None:
        """Fail before training, not at the first save hours later, when checkpoints cannot be written."""
        trainer = self.trainer
        default = trainer.loggers[0].save_dir if trainer.loggers else None  # where Lightning puts them
        for callback in trainer.checkpoint_callbacks:
            folder = str(callback.dirpath or default or trainer.default_root_dir)
            if _is_local_file_protocol(folder):
                ensure_writable_dir(folder, what="checkpoints")

    def _summarise(self) -> None:
        log_dir = self.trainer.log_dir  # a broadcast: every rank takes part
        if self.trainer.is_global_zero:
            objective = self.model.objective
            objective = getattr(objective, "objective", objective)  # inside ProtectSpecialTokens
            print(run_summary(self.trainer, self.subcommand, type(objective).__name__, log_dir))

    after_fit = after_validate = after_test = after_predict = _summarise

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` (one line for a missing, empty or truncated file), and take nothing from it but
        the weights: Lightning's default here overwrites the model's settings from the command line and config
        (``--model.generation.num_samples 16`` for ``test``, say) with the ones saved in the checkpoint, without a word."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path == "last":
            path = self.config[subcommand]["ckpt_path"] = self._newest_last_checkpoint()
        if path is not None and is_local_checkpoint_path(path):
            check_checkpoint(path)

    def _newest_last_checkpoint(self) -> str:
        """``--ckpt_path last``: the newest ``last*.ckpt`` under the run's root folder. Lightning looks only in this
        run's own folder, a new ``version_N`` on every invocation, and so would start a resumed run from scratch."""
        trainer = self.config[self.config.subcommand]["trainer"]
        root = Path(trainer.get("default_root_dir") or ".")
        folders = ("checkpoints", "*/*/checkpoints")  # no logger; a logger's NAME/VERSION (lightning_logs/version_N)
        found = [
            p
            for f in folders
            for p in root.glob(f"{f}/last*.ckpt")
            if re.fullmatch(r"last(-v\d+)?", p.stem) and p.exists()  # not a broken save_last link
        ]
        if not found:
            return "last"  # Lightning's own lookup (a callback's fixed dirpath), else it warns and starts afresh
        newest = str(max(found, key=lambda p: p.stat().st_mtime))
        if rank_zero_only.rank == 0:  # every rank parses the command line
            print(f"Resuming from {newest}")
        return newest


def _export(argv: list[str]) -> None:
    from lit_dft.export import export_checkpoint

    parser = argparse.ArgumentParser(prog="lit-dft export", description="Export a checkpoint to Hugging Face format.")
    parser.add_argument("ckpt_path", help="checkpoint written by lit-dft fit")
    parser.add_argument("out_dir", help="folder for the model and tokenizer (from_pretrained loads it)")
    parser.add_argument(
        "--adapter",
        action="store_true",
        help="a LoRA checkpoint's adapters alone, as a peft folder, instead of the merged model",
    )
    args = parser.parse_args(argv)
    print(f"Exported to {export_checkpoint(args.ckpt_path, args.out_dir, adapter_only=args.adapter)}")


_SUBCOMMANDS = {
    "fit": "train a model (and validate it during training)",
    "validate": "the validation loss and benchmark accuracy of a model or checkpoint",
    "test": "answer benchmark problems and report accuracy (mean@k, pass@k)",
    "predict": "answer benchmark problems and write the answers to predictions.jsonl",
    "export": "write a checkpoint as a Hugging Face model folder (LoRA: merged, or --adapter)",
    "plot-polarization": "the paper's token-probability figure from logged runs",
    "compare": "accuracies of runs side by side with 95% intervals and paired differences",
}


def _list_subcommands(problem: str) -> None:
    lines = [
        f"lit-dft: {problem}",
        "usage: lit-dft [--verbose] SUBCOMMAND [--help] ...   (--verbose: every third-party message too)",
        "",
    ]
    lines += [f"  {name:<18} {what}" for name, what in _SUBCOMMANDS.items()]
    lines += ["", "e.g. lit-dft fit --config configs/demo.yaml"]
    print("\n".join(lines), file=sys.stderr)
    raise SystemExit(2)


def _read_docstrings_once() -> None:
    """LightningCLI builds a parser for each of its four subcommands, and for each jsonargparse reads the source of
    every class again for its attribute docstrings: most of a ``lit-dft`` start. Read each class once per process."""
    import docstring_parser

    if not hasattr(docstring_parser.parse_from_object, "cache_info"):
        docstring_parser.parse_from_object = functools.cache(docstring_parser.parse_from_object)


def main(argv: list[str] | None = None) -> None:
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # data fields document themselves
    _read_docstrings_once()
    verbose, args = verbose_requested(sys.argv[1:] if argv is None else argv)
    if argv is None:
        sys.argv[1:] = args  # without --verbose, which LightningCLI would not know
    if not verbose:
        silence_known_noise()
    if not args:
        _list_subcommands("which subcommand?")
    if args[0] not in _SUBCOMMANDS and not args[0].startswith("-"):
        _list_subcommands(f"unknown subcommand {args[0]!r}")
    LitDFTError.last_message = None
    try:
        if args[:1] == ["export"]:
            _export(args[1:])
            return
        if args[:1] == ["plot-polarization"]:
            from lit_dft.plot import main as plot_main

            plot_main(args[1:])
            return
        if args[:1] == ["compare"]:
            from lit_dft.evaluation.compare import main as compare_main

            compare_main(args[1:])
            return
        register_strategies()
        LitDFTCLI(
            CausalLMModule,
            MathDataModule,
            args=argv if argv is None else args,  # None: LightningCLI reads sys.argv itself
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
