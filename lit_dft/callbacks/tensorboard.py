"""TensorBoard opened on what matters: the loss pairs as multi-line charts and the objective in the Text tab."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lit_dft.callbacks.token_stats import PROBE, prob_bin_tag

# CUSTOM SCALARS tab: a chart per entry, one line per tag that matches a regular expression
LAYOUT = {
    "loss pairs": {
        "train: the objective's loss, SFT's (nll) and DFT's": ["Multiline", [r"train/(loss|nll|dft)$"]],
        "val: the objective's loss, SFT's (nll) and DFT's": ["Multiline", [r"val/(loss|nll|dft)$"]],
    },
    "polarisation": {
        "probe: share of target tokens per probability bin": ["Multiline", [prob_bin_tag(PROBE) + ".*"]],
        "probe and train: mean target-token probability": ["Multiline", [r"(probe|train)/mean_prob$"]],
    },
}


class TensorBoardLayout(Callback):
    """When fit starts, writes the CUSTOM SCALARS layout (:data:`LAYOUT`) and, in the TEXT tab, the objective
    with its settings; the HPARAMS tab has every setting already. ``lit-dft fit`` adds this callback."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        objective = getattr(pl_module, "objective", None)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_custom_scalars(LAYOUT)
                if objective is not None:
                    doc = (type(objective).__doc__ or "").strip().split("\n\n")[0]
                    logger.experiment.add_text("objective", f"**{objective!r}**\n\n{doc}", global_step=0)
