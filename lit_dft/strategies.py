"""FSDP2 for Hugging Face decoders through Lightning: one shard unit per decoder layer, found from the model."""

from __future__ import annotations

from datetime import timedelta
from itertools import chain
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy, StrategyRegistry
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
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


def _has_meta(module: Module) -> bool:
    return any(t.is_meta for t in chain(module.parameters(), module.buffers()))


def fill_from_rank0(model: Module, state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Fill a sharded model that all ranks but 0 built on the meta device with rank 0's weights (``state`` there,
    ``{}`` elsewhere).

    A collective. Each rank allocates its shards on ``device`` and copies in its slice of each weight as rank 0
    broadcasts them one at a time, so no other rank ever holds the whole model. Tied weights are one parameter,
    filled under each name, so they stay one. Buffers left out of the state dict (rotary ``inv_freq``) hold
    garbage after ``to_empty``: rank 0 sends them as they are.
    """
    if _has_meta(model):
        model.to_empty(device=device)
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for sub in model.modules():
        for name in sorted(sub._non_persistent_buffers_set):  # sorted: set order differs between processes
            if sub._buffers.get(name) is not None:
                torch.distributed.broadcast(sub._buffers[name], src=0)


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
        load_on_rank0: with several processes, only global rank 0 reads the pretrained weights (into host
            memory); the others build the model on the meta device and receive just their shards, one weight at
            a time, after sharding. ``False``: every rank loads the whole model before sharding (host memory
            for one full copy per process).
    """

    def __init__(
        self,
        param_dtype: Literal["bfloat16", "float16", "float32"] | None = None,
        reduce_dtype: Literal["bfloat16", "float16", "float32"] | None = None,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        load_on_rank0: bool = True,
    ) -> None:
        super().__init__(
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.policy = MixedPrecisionPolicy(param_dtype=DTYPES.get(param_dtype), reduce_dtype=DTYPES.get(reduce_dtype))
        self.reshard_after_forward = reshard_after_forward
        self.load_on_rank0 = load_on_rank0

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
            if isinstance(model, FSDPModule):  # fit then test: shard once
                continue
            from_rank0 = self._loaded_on_rank0(model)
            state = model.state_dict() if from_rank0 and self.global_rank == 0 else {}  # freed once filled
            shard_decoder(model, mesh, self.policy, self.reshard_after_forward)
            if from_rank0:
                fill_from_rank0(model, state, self.root_device)
        super().setup(trainer)  # materialises what is still on the meta device (Lightning's meta-device init)

    def _loaded_on_rank0(self, model: Module) -> bool:
        """Whether ``model`` came from ``load_model_on_rank0``: real on rank 0, on the meta device elsewhere."""
        if not loads_on_rank0(self):
            return False
        meta = [None] * self.world_size
        torch.distributed.all_gather_object(meta, _has_meta(model))
        return not meta[0] and any(meta)


def loads_on_rank0(strategy: Strategy) -> bool:
    """Whether ``configure_model`` loads the weights on rank 0 only: ``FSDP2Strategy(load_on_rank0=True)``, several
    processes."""
    return isinstance(strategy, FSDP2Strategy) and strategy.load_on_rank0 and strategy.world_size > 1


def register_strategies() -> None:
    """Make ``strategy: fsdp2`` a name the Trainer knows (the CLI calls this; Python code may pass the class)."""
    if "fsdp2" not in StrategyRegistry:
        StrategyRegistry.register(
            "fsdp2", FSDP2Strategy, description="FSDP2 over all ranks, one unit per decoder layer"
        )
