"""The causal-LM LightningModule: one forward pass, a selectable token objective, global-batch normalisation."""

from __future__ import annotations

import copy
import os
from dataclasses import asdict
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DeepSpeedStrategy, ModelParallelStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from torch.distributed.tensor import DTensor
from torchmetrics.aggregation import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_dft.batch import Prediction, PromptBatch, TokenOutputs, TrainingBatch
from lit_dft.checkpoints import FINGERPRINT, check_fingerprint, fingerprint, plain_config
from lit_dft.errors import LitDFTError
from lit_dft.evaluation.checking import AnswerChecker
from lit_dft.evaluation.metrics import MathAccuracy
from lit_dft.generation import GenerationArgs, generate, score, special_token_ids
from lit_dft.lora import LoraArgs, add_adapters, is_lora
from lit_dft.models import EMBEDDED_MODEL, load_model, load_model_on_rank0, load_tokenizer
from lit_dft.objectives import DFT, ProtectSpecialTokens, TokenObjective, build_objective
from lit_dft.optim import OptimizerArgs, configure_adamw
from lit_dft.strategies import is_sharded, loads_on_rank0
from lit_dft.token_loss import TokenLoss

_PAPER_DFT = DFT()
# Token means logged per optimiser step and per validation, besides the objective's loss: SFT's and DFT's
# values (the loss pair), the target probability, the entropy, and KL to the reference for objectives with one.
_TOKEN_STATS = ("nll", "dft", "target_prob", "entropy", "kl_ref")
_REFERENCE_PREFIX = "reference_model."
REFERENCE_FROM_DATA = "data"
"""``model.reference`` when the reference's log-probabilities come with the data, not from a model."""
_HALF = (torch.bfloat16, torch.float16)


def _batch_seed(run_seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    """The seed of one micro-batch's random numbers on one rank: a function of where it is in the run only."""
    return (((run_seed * 1_000_003 + epoch) * 1_000_003 + batch_idx) * 1_009 + rank) % 2**63


def check_strategy(strategy: Strategy) -> None:
    """Refuse strategies whose optimiser step bypasses the global-batch rescale in ``on_before_optimizer_step``."""
    if isinstance(strategy, DeepSpeedStrategy):
        raise LitDFTError(
            "DeepSpeed is not supported: its engine owns the gradients and the step, so lit_dft cannot normalise "
            "the loss over the global batch's target tokens. Use strategy fsdp2 (ZeRO-3 sharding) or ddp."
        )


class CausalLMModule(LightningModule):
    """Fine-tunes a causal LM with a token objective (``sft``, ``dft`` or your own).

    A :class:`~lit_dft.batch.TrainingBatch` becomes :class:`~lit_dft.batch.TokenOutputs` (the *sum* of the
    token losses, which is what backward needs, see below, and every target token's log-probability);
    callbacks get them with ``TokenOutputs.of(outputs)`` in ``on_train_batch_end`` and
    ``on_validation_batch_end``, without a second forward pass. A :class:`~lit_dft.batch.PromptBatch` (a
    benchmark in validate/test/predict) is answered by generation, giving :class:`~lit_dft.batch.Prediction`
    records.

    Normalisation: the gradient is the sum of token-loss gradients over the *global* batch (all
    micro-batches of an accumulation window on all ranks) divided by that global batch's number of
    target tokens. Each micro-batch back-propagates its unnormalised sum; after the last backward of
    the window (inside ``optimizer_step``'s closure, so before every ``on_before_optimizer_step`` hook,
    callbacks included, and before clipping) one all-reduce brings the token count and whether any
    gradient is non-finite, and the gradients are rescaled once, undoing both Lightning's division by
    ``accumulate_grad_batches`` and DDP/FSDP's average over ranks.

    Args:
        model_name_or_path: hub id, local folder, ``.gguf`` file, ``smollm2-135m-instruct`` (embedded
            default, no network) or ``tiny`` (random 2-layer model for tests).
        loss: objective name from ``lit_dft.objectives.OBJECTIVES`` or a ``TokenObjective`` instance.
        dtype: weights' dtype when loading (``float32``, ``bfloat16``, ``float16``, ``auto``);
            ``None`` keeps the checkpoint's default. Mixed precision is the trainer's ``precision``.
        trust_remote_code: run model code from the hub; off unless you trust the repository.
        gradient_checkpointing: recompute activations in backward to save memory.
        reference: the frozen reference of an objective that has one (``asft``, ``iw_sft``): ``None`` copies the
            initial weights; else a name as for ``model_name_or_path`` (same tokenizer), or ``data``: no reference
            model, its log-probabilities come with the data (``data.reference_log_probs_column``, for ``iw_sft``,
            not for a KL term). Saved in checkpoints, so a resumed run keeps its reference.
        loss_chunk_size: target tokens per chunk of the output projection in the chunked loss;
            ``None`` chunks when the vocabulary has >= 32,768 entries, with chunks of about 128 MB of
            float32 logits (512 MB on a GPU); ``0`` always uses full logits.
        optimizer: AdamW and its schedule (learning rate, betas, weight decay, warm-up, final ratio).
        generation: how benchmark answers are generated (max new tokens, k samples, temperature, top-p).
        lora: low-rank adapters on the frozen model (``r > 0``, needs ``lit-dft[lora]``): only they train, the
            checkpoints hold only them, and an objective with a KL term uses the model with the adapters off as
            its reference, so no second copy of the weights is held.
        answer_timeout_s: seconds one answer check may take before it counts as incorrect.
        on_nonfinite: what a NaN/inf loss or gradient does: ``skip`` the optimiser step (weights untouched,
            counted in ``train/skipped_steps``) or ``stop`` the run with a message.
        protect_special_tokens: train special and template tokens (EOS, end of turn) with SFT's loss whatever
            the objective, so that one that down-weights unlikely tokens still learns when to stop.
        float32_matmul_precision: how float32 matrix products run (``torch.set_float32_matmul_precision``, set for
            the process when the module is made, before Lightning sets up the device): ``high`` lets GPUs use TF32
            tensor cores (a ``32-true`` run, the chunked loss's float32 products), ``highest`` keeps full float32,
            ``medium`` allows bf16 (on CPUs too); ``None`` leaves the process's setting.
    """

    def __init__(
        self,
        model_name_or_path: str = EMBEDDED_MODEL,
        loss: str | TokenObjective = "dft",
        dtype: str | None = None,
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
        loss_chunk_size: int | None = None,
        optimizer: OptimizerArgs = OptimizerArgs(),
        generation: GenerationArgs = GenerationArgs(),
        answer_timeout_s: float = 5.0,
        on_nonfinite: Literal["skip", "stop"] = "skip",
        protect_special_tokens: bool = False,
        reference: str | None = None,
        lora: LoraArgs = LoraArgs(),
        float32_matmul_precision: Literal["highest", "high", "medium"] | None = "high",
    ) -> None:
        super().__init__()
        if float32_matmul_precision is not None:
            torch.set_float32_matmul_precision(float32_matmul_precision)
        # dicts from a checkpoint's hyperparameters (load_from_checkpoint) or a saved config become the dataclasses
        self.optimizer_args = OptimizerArgs(**optimizer) if isinstance(optimizer, dict) else optimizer
        self.generation = generation = GenerationArgs(**generation) if isinstance(generation, dict) else generation
        self.lora = LoraArgs(**lora) if isinstance(lora, dict) else lora
        if reference not in (None, REFERENCE_FROM_DATA) and self.lora.enabled:
            raise LitDFTError(
                "model.reference cannot be set with LoRA: the reference is the base model with the adapters off"
            )
        if generation.num_samples > 1 and generation.temperature == 0:
            raise LitDFTError(
                f"num_samples={generation.num_samples} with temperature 0 would repeat one greedy answer "
                f"{generation.num_samples} times; set model.generation.temperature > 0 (the paper: 1.0) or "
                "model.generation.num_samples: 1"
            )
        if loss_chunk_size is not None and loss_chunk_size < 0:
            raise LitDFTError(
                f"loss_chunk_size must be >= 1, 0 (full logits) or None (automatic), got {loss_chunk_size}"
            )
        # hyperparameters as plain values, so checkpoints load with weights_only=True and hparams.yaml reads back
        optimizer, generation, lora = asdict(self.optimizer_args), asdict(generation), self.lora.as_dict()
        self.save_hyperparameters()
        objective = build_objective(loss)
        self.objective = ProtectSpecialTokens(objective) if protect_special_tokens else objective
        self.checker = AnswerChecker(answer_timeout_s)
        self.eval_metrics = torch.nn.ModuleDict()
        self.model: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.token_loss: TokenLoss | None = None  # built with the model, in configure_model
        self._window: Tensor | None = None  # float32 sums over the accumulation window: loss, stats, target tokens
        self.skipped_steps = 0
        self._stat_names = ["loss"] + [n for n in _TOKEN_STATS if n != "kl_ref" or self.objective.kl_weight > 0]
        self.val_metrics = torch.nn.ModuleDict({name: MeanMetric() for name in self._stat_names})
        self.reference_model: PreTrainedModel | None = None  # frozen, for objectives with a reference model
        self._run_seed = 0  # the seed training's random numbers derive from (set when fit starts, or resumed)
        self._vllm = None  # the vLLM engine of generation.backend 'vllm', made at the first generation

    def setup(self, stage: str) -> None:
        check_strategy(self.trainer.strategy)
        if self.hparams.float32_matmul_precision is not None:  # again: a process that unpickled the module (spawn)
            torch.set_float32_matmul_precision(self.hparams.float32_matmul_precision)
        self._run_seed = torch.initial_seed()  # seed_everything's; a resumed fit takes its checkpoint's

    @classmethod
    def from_model(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **kwargs: Any) -> CausalLMModule:
        """A module around a model you built (a notebook, a test): ``configure_model`` then loads nothing."""
        kwargs.setdefault("model_name_or_path", tokenizer.name_or_path)  # what export saves the tokenizer from
        module = cls(**kwargs)
        module.model, module.tokenizer = model, tokenizer
        return module

    def configure_model(self) -> None:
        """Load tokenizer and model once (Lightning calls this on the target device/strategy) and build the loss."""
        if self.token_loss is not None:
            return
        hp = self.hparams
        if self.model is None:
            self.tokenizer = load_tokenizer(hp.model_name_or_path, hp.trust_remote_code)
            self.model = self._load_model(hp.model_name_or_path)
            embeddings = self.model.get_input_embeddings().num_embeddings
            if embeddings < len(self.tokenizer):
                raise LitDFTError(
                    f"Tokenizer of {hp.model_name_or_path!r} has {len(self.tokenizer)} tokens but the model's "
                    f"embedding has only {embeddings} rows: tokenizer and model do not match."
                )
        if hp.reference is not None and not self.objective.needs_reference:
            raise LitDFTError(
                f"model.reference is used by objectives with a reference (asft, iw_sft), not {self.objective!r}"
            )
        if hp.reference == REFERENCE_FROM_DATA and self.objective.kl_weight > 0:
            raise LitDFTError(
                f"model.reference: data gives the reference's log-probabilities of the targets only; {self.objective!r}"
                " has a KL term, which needs its whole distribution: name a reference model or leave it unset"
            )
        from_data = hp.reference == REFERENCE_FROM_DATA
        if self.objective.needs_reference and self.reference_model is None and not (self.lora.enabled or from_data):
            self.reference_model = self._reference()
        if hp.gradient_checkpointing:
            # transformers 5.23 renamed it (the old name now warns); the first argument is the checkpoint's kwargs
            enable = getattr(self.model, "activation_checkpointing_enable", self.model.gradient_checkpointing_enable)
            enable({"use_reentrant": False})
            self.model.config.use_cache = False
        if self.lora.enabled and not is_lora(self.model):
            self.model = add_adapters(self.model, self.lora)
        special = special_token_ids(self.model, self.tokenizer)
        reference = self.model if self.lora.enabled and not from_data else self.reference_model  # LoRA: adapters off
        self.token_loss = TokenLoss(self.model, self.objective, hp.loss_chunk_size, special, reference)

    def _load_model(self, name: str) -> PreTrainedModel:
        """The model ``name``; under ``FSDP2Strategy(load_on_rank0=True)`` its weights on rank 0 only (the other ranks
        hold it on the meta device, and get their shards from rank 0 when the strategy shards it)."""
        hp = self.hparams
        on_rank0 = self._trainer is not None and loads_on_rank0(self.trainer.strategy)
        load = load_model_on_rank0 if on_rank0 else load_model
        return load(name, hp.dtype, hp.trust_remote_code, vocab_size=len(self.tokenizer))

    def _reference(self) -> PreTrainedModel:
        """The frozen reference: a copy of the initial weights, or the model ``reference`` names."""
        hp = self.hparams
        if hp.reference is None:
            reference = copy.deepcopy(self.model)
        else:
            reference = self._load_model(hp.reference)
            rows = reference.get_input_embeddings().num_embeddings
            if rows != self.model.get_input_embeddings().num_embeddings:
                raise LitDFTError(
                    f"Reference {hp.reference!r} has {rows} embedding rows, the model "
                    f"{self.model.get_input_embeddings().num_embeddings}: they must share the tokenizer"
                )
        return reference.requires_grad_(False)  # in eval mode for each of its forwards (TokenLoss), not before

    # ---- forward ---------------------------------------------------------------------------------

    def token_outputs(self, batch: TrainingBatch) -> TokenOutputs:
        """The objective's loss sum and every target token's log-probability, in one forward pass."""
        if self.token_loss is None:
            raise LitDFTError(f"{type(self).__name__}.configure_model must call super().configure_model()")
        return self.token_loss(batch)

    @torch.no_grad()
    def measure(self, batch: TrainingBatch) -> TokenOutputs:
        """Token outputs as validation computes them (eval mode, the trainer's precision, no gradient), for
        measurements outside the validation loop such as the probe before training."""
        was_training = self.training
        self.eval()
        try:
            with self.trainer.precision_plugin.val_step_context():
                return self.token_outputs(batch)
        finally:
            self.train(was_training)

    @staticmethod
    def _token_stats(out: TokenOutputs) -> dict[str, Tensor]:
        """Per-token SFT and paper-DFT values, probabilities and entropies: the loss pair and its diagnostics."""
        log_probs = out.log_probs
        stats = {
            "nll": -log_probs,
            "dft": _PAPER_DFT(log_probs),
            "target_prob": log_probs.exp(),
            "entropy": out.select(out.target_entropy),
        }
        return stats | ({"kl_ref": out.select(out.target_kl)} if out.target_kl is not None else {})

    # ---- training --------------------------------------------------------------------------------

    def training_step(self, batch: TrainingBatch, batch_idx: int) -> dict[str, Any]:
        out = self.token_outputs(batch)
        stats = self._token_stats(out)
        tokens = stats["nll"].new_full((), stats["nll"].numel())  # a fill on the device, no copy from the host
        sums = [out.loss.detach()] + [value.sum() for value in stats.values()] + [tokens]
        window = torch.stack([value.float() for value in sums])
        self._window = window if self._window is None else self._window + window
        return out.step_output()

    def on_train_batch_start(self, batch: TrainingBatch, batch_idx: int) -> None:
        """Each micro-batch draws its random numbers (dropout masks: LoRA's, the model's) from a seed of its own,
        derived from the run's seed and its place in the run (epoch, batch, rank). What draws in between
        (validation, the probe, a new epoch's data loader) cannot shift them, and a resumed run, on any number
        of ranks, draws what the uninterrupted one did without any random state saved."""
        epoch = self.trainer.fit_loop.epoch_progress.current.processed
        torch.manual_seed(_batch_seed(self._run_seed, epoch, batch_idx, self.global_rank))

    def on_fit_start(self) -> None:
        half = sorted({str(p.dtype) for p in self.parameters() if p.requires_grad and p.dtype in _HALF})
        if half:
            rank_zero_warn(
                f"The trainable weights are {', '.join(half)}: AdamW then updates them in that precision, and at "
                "small learning rates most updates round away. Keep float32 master weights: model.dtype: float32 "
                "with trainer.precision: bf16-mixed, or FSDP2's param_dtype: bfloat16."
            )

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Normalise the gradients right after the window's last backward, before any hook or clipping sees them."""

        def closure() -> Any:
            result = optimizer_closure()
            self._normalise_gradients()
            return result

        optimizer.step(closure=closure)

    def _normalise_gradients(self) -> None:
        """One all-reduce of the window's sums, its token count and whether any gradient shard is non-finite;
        then one rescale. Under fp16 with a GradScaler an overflow is the scaler's to handle (it skips the step
        and lowers the scale): the gradients are rescaled as they are, and only ``on_nonfinite: stop`` acts here."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]  # FSDP2: this rank's shard
        # norms in at least float32: a float16 norm of large finite gradient sums would overflow to inf
        norms = [torch.linalg.vector_norm(g, dtype=torch.promote_types(g.dtype, torch.float32)) for g in local]
        finite = torch.stack([torch.isfinite(norm) for norm in norms]).all() if norms else torch.tensor(True)
        nonfinite = (~finite).to(self._window).reshape(1)
        totals = self.trainer.strategy.reduce(torch.cat([self._window, nonfinite]), reduce_op="sum")
        self._window = None
        # the objective's loss, not the diagnostics after it, decides (the same on every rank)
        nonfinite_loss, nonfinite_grad = not torch.isfinite(totals[0]), totals[-1] > 0
        if getattr(self.trainer.precision_plugin, "scaler", None) is None:
            if nonfinite_loss or nonfinite_grad:
                self._skip_nonfinite_step()
                return
        elif nonfinite_loss and self.hparams.on_nonfinite == "stop":  # the scaler skips; "stop" still stops
            self._skip_nonfinite_step()
        tokens = max(float(totals[-2]), 1.0)
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / tokens  # a Python (double) float
        for grad in grads:
            grad.mul_(scale)
        means = totals[:-2] / tokens
        for name, value in zip(self._stat_names, means):
            self.log(f"train/{name}", value, prog_bar=name == "loss", rank_zero_only=True)
        self.log("train/target_tokens", totals[-2], rank_zero_only=True)

    def _skip_nonfinite_step(self) -> None:
        if self.hparams.on_nonfinite == "stop":
            raise LitDFTError(
                f"Non-finite loss or gradient at step {self.global_step}; the weights are those of the last good step. "
                "Lower the learning rate, check the data, or set model.on_nonfinite: skip."
            )
        for param in self.parameters():
            param.grad = None  # AdamW skips parameters without gradients: the weights stay untouched
        self.skipped_steps += 1
        rank_zero_warn(
            f"Non-finite loss or gradient at step {self.global_step}: optimiser step skipped "
            f"({self.skipped_steps} so far)."
        )
        self.log("train/skipped_steps", float(self.skipped_steps), rank_zero_only=True)

    # ---- validation ------------------------------------------------------------------------------

    def validation_step(
        self, batch: TrainingBatch | PromptBatch, batch_idx: int, dataloader_idx: int = 0
    ) -> TokenOutputs | list[Prediction]:
        if isinstance(batch, PromptBatch):
            return self._answer(batch)
        out = self.token_outputs(batch)
        stats = self._token_stats(out)
        tokens = stats["nll"].numel()
        if tokens == 0:
            return out
        self.val_metrics["loss"].update(out.loss / tokens, tokens)  # the objective's token mean, weighted by tokens
        for name, values in stats.items():
            self.val_metrics[name].update(values)
        for name, metric in self.val_metrics.items():
            self.log(
                f"val/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "loss", add_dataloader_idx=False
            )
        return out

    # ---- evaluation by generation ----------------------------------------------------------------

    def _answer(self, batch: PromptBatch) -> list[Prediction]:
        """Generate k answers per problem, check them, update the benchmark's accuracy; the predictions go to
        callbacks."""
        texts = self._generate(batch)
        # A scheduler's SIGTERM: stop now, without scoring cut-off answers; every rank together (a collective),
        # since a rank that went on into the next sharded generation would wait for the others forever.
        if self._trainer is not None and self.trainer.strategy.reduce_boolean_decision(
            self.trainer.received_sigterm, all=False
        ):
            raise SIGTERMException
        correct, predictions = score(texts, batch, self.generation.num_samples, self.checker)
        name = batch.benchmark
        if name not in self.eval_metrics:
            self.eval_metrics[name] = MathAccuracy().to(self.device)
        self.eval_metrics[name].update(correct.to(self.device))
        return predictions

    def _generate(self, batch: PromptBatch) -> list[str]:
        if self.generation.backend == "hf":
            return generate(self.model, self.tokenizer, batch, self.generation, self._received_sigterm)
        if self._trainer is not None and self.trainer.state.fn == "fit":
            raise LitDFTError(
                "model.generation.backend 'vllm' answers in validate/test/predict, not in fit's validations "
                "(its engine would keep the weights it started with); use backend 'hf' with validate_benchmarks"
            )
        if self._vllm is None:
            from lit_dft.vllm_generation import VLLMGenerator

            if self._trainer is not None and self.trainer.world_size > 1:
                raise LitDFTError(
                    "model.generation.backend 'vllm' runs in one process (trainer.devices: 1); for several GPUs set "
                    "model.generation.vllm_args.tensor_parallel_size"
                )
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
            self._vllm = VLLMGenerator(self.model, self.tokenizer, self.lora, seed, self.generation.vllm_args)
        return self._vllm(batch, self.generation)

    def on_test_start(self) -> None:
        self._announce(self.trainer.num_test_batches)

    def on_predict_start(self) -> None:
        self._announce(self.trainer.num_predict_batches)

    def _announce(self, batches: list[int | float]) -> None:
        s = self.generation
        rank_zero_info(
            f"Answering {int(sum(batches))} batches of problems from {len(batches)} benchmark(s): {s.num_samples} "
            f"sample(s) each, up to {s.max_new_tokens} new tokens, temperature {s.temperature}"
        )

    def _received_sigterm(self) -> bool:
        return self._trainer is not None and self._trainer.received_sigterm

    def test_step(self, batch: PromptBatch, batch_idx: int, dataloader_idx: int = 0) -> list[Prediction]:
        return self._answer(batch)

    def predict_step(self, batch: PromptBatch, batch_idx: int, dataloader_idx: int = 0) -> list[Prediction]:
        return self._answer(batch)

    def _log_benchmarks(self, stage: str) -> None:
        """``<stage>/<benchmark>/acc`` (mean@k), ``.../acc_stderr``, ``.../pass_at_k`` and the average ``<stage>/acc``."""
        accuracies = []
        for name, metric in self.eval_metrics.items():
            values = metric.compute()
            accuracies.append(values["acc"])
            for key, value in values.items():
                self.log(f"{stage}/{name}/{key}", value, add_dataloader_idx=False)
            metric.reset()
        if accuracies:
            self.log(f"{stage}/acc", torch.stack(accuracies).mean(), add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        self._log_benchmarks("val")
        self._vllm = None  # a vLLM engine answers for the weights it was made from: this evaluation only

    def on_test_epoch_end(self) -> None:
        self._log_benchmarks("test")
        self._vllm = None

    def on_predict_epoch_end(self) -> None:
        self.eval_metrics.clear()
        self._vllm = None

    # ---- optimisation ----------------------------------------------------------------------------

    def flops_per_token(self) -> int:
        """Model FLOPs of a training step per token (for MFU): 6 per trained parameter (forward, input and weight
        gradients), 4 per frozen one that gradients flow through (a LoRA model's base), and 2 per parameter of the
        reference's forward (a frozen copy, or a LoRA model's base again, with its adapters off)."""
        trained = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
        reference = 0
        if self.reference_model is not None:
            reference = sum(p.numel() for p in self.reference_model.parameters())
        elif self.lora.enabled and self.objective.needs_reference and self.hparams.reference != REFERENCE_FROM_DATA:
            # LoRA: the base model with the adapters off
            reference = frozen
        return 6 * trained + 4 * frozen + 2 * reference

    def configure_optimizers(self) -> dict[str, Any]:
        steps = int(self.trainer.estimated_stepping_batches)
        return configure_adamw(self.parameters(), self.optimizer_args, steps, fused=self._fused_adamw())

    def _fused_adamw(self) -> bool:
        """torch's fused AdamW, except with a GradScaler (``16-mixed``): Lightning then refuses gradient clipping,
        since a fused optimiser unscales the gradients inside its step."""
        return getattr(self.trainer.precision_plugin, "scaler", None) is None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the model's config so ``lit-dft export`` rebuilds it without the original weights; leave out the
        weights that never change (a reference model, a LoRA model's base: rebuilt from their source on load, and
        checked against a fingerprint kept here), except under FSDP2, whose loader reads the weights strictly
        before this module sees the checkpoint."""
        checkpoint["hf_config"] = plain_config(self.model.config)
        checkpoint["run_seed"] = self._run_seed
        if self.objective.needs_reference:
            checkpoint["reference"] = self._reference_source()
        if not isinstance(self.trainer.strategy, ModelParallelStrategy):
            state = checkpoint["state_dict"]
            frozen = [key for key in self._frozen_keys() if key in state]
            checkpoint[FINGERPRINT] = fingerprint([state[key] for key in frozen])
            for key in frozen:
                del state[key]

    def _frozen_keys(self) -> list[str]:
        return [name for name, p in self.named_parameters(remove_duplicate=False) if not p.requires_grad]

    def _reference_source(self) -> str:
        return self.hparams.reference or f"the initial weights of {self.hparams.model_name_or_path}"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another model shape, LoRA setting or reference with one sentence rather than a
        shape or key error; the frozen weights come from their source, as when the checkpoint was written."""
        if self._trainer is not None and self.trainer.state.fn == "fit":  # resuming: the run's random numbers
            self._run_seed = checkpoint.get("run_seed", self._run_seed)
        state = checkpoint.get("state_dict", {})
        if self.reference_model is None:
            for key in [k for k in state if k.startswith(_REFERENCE_PREFIX)]:  # a run with a KL term, read without
                del state[key]
        if "reference" in checkpoint and self.objective.needs_reference:
            if checkpoint["reference"] != self._reference_source():
                raise LitDFTError(
                    f"The checkpoint was trained against the reference {checkpoint['reference']}, this run's is "
                    f"{self._reference_source()}: set model.reference to the one it was trained with"
                )
        saved = checkpoint.get("hf_config", {})
        current = self.model.config
        for key in ("vocab_size", "hidden_size", "num_hidden_layers"):
            if key in saved and saved[key] != getattr(current, key, None):
                raise LitDFTError(
                    f"Checkpoint does not match model {self.hparams.model_name_or_path!r}: its {key} is {saved[key]}, "
                    f"the model's is {getattr(current, key, None)}. Set model.model_name_or_path to the model it was trained from."
                )
        if state and not is_sharded(self):
            self._restore_frozen(state, checkpoint.get(FINGERPRINT))

    def _restore_frozen(self, state: dict[str, Tensor], saved: float | None) -> None:
        """Fill in the frozen weights a checkpoint leaves out from this module's own (rebuilt from their source);
        weights whose names or shapes differ are one sentence, and so are rebuilt weights that are not the ones the
        checkpoint was trained with."""
        own = self.state_dict()
        frozen = [key for key in self._frozen_keys() if key not in state]
        state.update({key: own[key] for key in frozen})
        problems = {
            "missing": sorted(own.keys() - state.keys()),
            "unexpected": sorted(state.keys() - own.keys()),
            "of another shape": sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape),
        }
        found = [f"{len(keys)} {kind} (e.g. {keys[0]})" for kind, keys in problems.items() if keys]
        if found:
            lora = f"LoRA r={self.lora.r}" if self.lora.enabled else "no LoRA"
            raise LitDFTError(
                f"The checkpoint's weights do not fit this model ({lora}): {', '.join(found)}. Use the model.lora "
                "settings it was trained with."
            )
        if frozen:  # the names fit: are the rebuilt weights those it was trained with?
            check_fingerprint(saved, [own[key] for key in frozen], self.hparams.model_name_or_path)
