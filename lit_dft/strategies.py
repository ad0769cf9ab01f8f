"""FSDP2 for Hugging Face decoders through Lightning: one shard unit per decoder layer, found from the model."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn import Module
from transformers import PreTrainedModel

from lit_dft.errors import LitDFTError
from lit_dft.models import DTYPES


def top_level_models(module: Module) -> list[PreTrainedModel]:
    """The Hugging Face models inside ``module`` that no other Hugging Face model contains."""
    if isinstance(module, PreTrainedModel):
        return [module]
    return [model for child in module.children() for model in top_level_models(child)]


def decoder_layer_classes(model: PreTrainedModel) -> tuple[type[Module], ...]:
    """The classes ``model`` names in ``_no_split_modules`` (e.g. ``Qwen2DecoderLayer``) that it contains.

    Hugging Face marks these blocks as the ones that must stay whole on one device: the natural
    unit of sharding.
    """
    names = {
        name for sub in model.modules() if isinstance(sub, PreTrainedModel) for name in sub._no_split_modules or ()
    }
    classes = tuple({type(sub) for sub in model.modules() if type(sub).__name__ in names})
    if not classes:
        raise LitDFTError(
            f"{type(model).__name__} names no decoder layer in `_no_split_modules`: FSDP2Strategy cannot shard it."
        )
    return classes


def is_sharded(module: Module) -> bool:
    """Whether any part of ``module`` is sharded by FSDP2 (every rank must then run the same forwards)."""
    return any(isinstance(sub, FSDPModule) for sub in module.modules())


def full_state_dict(model: Module) -> dict[str, torch.Tensor]:
    """The model's full weights; gathered from the shards when sharded (a collective: call it on every rank)."""
    if not is_sharded(model):
        return model.state_dict()
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def shard_decoder(
    model: PreTrainedModel,
    mesh: torch.distributed.DeviceMesh,
    policy: MixedPrecisionPolicy,
    reshard_after_forward: bool,
) -> None:
    """``fully_shard`` each decoder layer, then the model (embeddings, final norm and head, tied or not).

    The top-level unit keeps FSDP's default of staying gathered after forward: the chunked loss reads
    the output head from a hook rather than through the model's output, so the unit must not be
    resharded before backward. A frozen model (a reference) has no backward, where FSDP would reshard it:
    it reshards after every forward (the loss runs inside that forward, while its head is gathered).
    """
    frozen = not any(p.requires_grad for p in model.parameters())
    layers = decoder_layer_classes(model)
    for sub in list(model.modules()):
        if isinstance(sub, layers):
            fully_shard(sub, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward or frozen)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=True if frozen else None)


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel (FSDP2) over every process, applied to the LightningModule's Hugging Face model.

    Parameters, gradients and optimiser state are split across all ranks (ZeRO-3); each decoder
    layer gathers its parameters just for its forward and backward. The layers are the model's own
    ``_no_split_modules`` classes, so any Hugging Face decoder shards without configuration. Runs on
    GPUs (NCCL) and on CPUs (gloo). Activation checkpointing is the module's
    ``gradient_checkpointing``. Multi-node: set ``trainer.num_nodes``; every rank of every node holds
    one shard.

    Args:
        param_dtype: dtype parameters are gathered and computed in, e.g. ``bfloat16``, while the sharded
            master weights keep their own dtype (float32 for exact AdamW updates). ``None``: compute in the
            parameters' dtype (combine with the trainer's ``precision``).
        reduce_dtype: dtype gradients are reduce-scattered in; ``None``: ``param_dtype``.
        reshard_after_forward: free each layer's gathered parameters after its forward and gather them
            again in backward (least memory); ``False`` keeps them (one all-gather less per layer).
        save_distributed_checkpoint: ``True``: each rank writes its shard into a checkpoint folder (fast
            for big models); ``False``: rank 0 writes one full ``.ckpt`` file, which ``lit-dft export`` reads.
        process_group_backend: ``nccl`` or ``gloo``; ``None`` picks the device's default.
        timeout: how long a collective may wait for the other ranks.
    """

    def __init__(
        self,
        param_dtype: Literal["bfloat16", "float16", "float32"] | None = None,
        reduce_dtype: Literal["bfloat16", "float16", "float32"] | None = None,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.policy = MixedPrecisionPolicy(param_dtype=DTYPES.get(param_dtype), reduce_dtype=DTYPES.get(reduce_dtype))
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # one model sharded over all ranks
        super().setup_environment()

    def setup(self, trainer: pl.Trainer) -> None:
        # Evaluate under no_grad, not inference mode: FSDP2 on a single process fails on inference tensors
        # ("Inference tensors do not track version counter"), as Lightning's FSDP1 strategy does for FSDP1.
        loops = (trainer.fit_loop.epoch_loop.val_loop, trainer.validate_loop, trainer.test_loop, trainer.predict_loop)
        for loop in loops:
            loop.inference_mode = False
        mesh = self.device_mesh["data_parallel"]
        for model in top_level_models(self.lightning_module):
            if not isinstance(model, FSDPModule):  # fit then test: shard once
                shard_decoder(model, mesh, self.policy, self.reshard_after_forward)
        super().setup(trainer)


def register_strategies() -> None:
    """Make ``strategy: fsdp2`` a name the Trainer knows (the CLI calls this; Python code may pass the class)."""
    if "fsdp2" not in StrategyRegistry:
        StrategyRegistry.register(
            "fsdp2", FSDP2Strategy, description="FSDP2 over all ranks, one unit per decoder layer"
        )
