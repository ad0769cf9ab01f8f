from types import SimpleNamespace

import torch
from lightning.pytorch.loggers import Logger

from lit_dft.callbacks import TokenThroughput
from lit_dft.callbacks.throughput import compute_dtype, flops_per_token
from lit_dft.strategies import FSDP2Strategy, top_level_models
from tests.helpers import MICRO_LORA, MicroModule, SGDModule, loader, quiet_trainer, uneven_rows


class _Clock:
    """A clock the test moves: one second per training batch, a hundred per validation batch."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _TimedModule(SGDModule):
    clock: _Clock

    def training_step(self, batch, batch_idx):
        self.clock.now += 1.0
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.clock.now += 100.0
        return super().validation_step(batch, batch_idx)


class _MemoryLogger(Logger):
    name, version = "memory", 0

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[int, dict[str, float]] = {}

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.setdefault(step, {}).update(metrics)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_tokens_per_second_leave_out_validation_time():
    clock, logger = _Clock(), _MemoryLogger()
    throughput = TokenThroughput(every_n_steps=2)
    throughput._clock = clock
    module = MicroModule(module_class=_TimedModule)
    module.clock = clock
    module.configure_model()
    rows = uneven_rows()
    trainer = quiet_trainer(
        max_steps=4, precision="64-true", logger=logger, callbacks=[throughput], val_check_interval=2
    )
    trainer.fit(module, loader(rows, 2), loader(rows[:2], 2))
    batches = list(loader(rows, 2))
    second_window = sum(int(b.attention_mask.sum()) for b in batches[2:4])  # two 1-second batches
    assert logger.metrics[4]["perf/tokens_per_s"] == second_window / 2.0
    first_window = int(batches[1].attention_mask.sum())  # the clock starts after the first batch
    assert logger.metrics[2]["perf/tokens_per_s"] == first_window / 1.0


def test_mfu_peak_is_that_of_the_compute_dtype():
    module = torch.nn.Linear(2, 2)
    fsdp_bf16 = SimpleNamespace(strategy=FSDP2Strategy(param_dtype="bfloat16"), precision="32-true")
    assert compute_dtype(fsdp_bf16, module) == torch.bfloat16
    assert compute_dtype(SimpleNamespace(strategy=None, precision="bf16-mixed"), module) == torch.bfloat16
    assert compute_dtype(SimpleNamespace(strategy=None, precision="16-mixed"), module) == torch.float16
    assert compute_dtype(SimpleNamespace(strategy=FSDP2Strategy(), precision="32-true"), module) == torch.float32


def test_flops_per_token_count_trained_frozen_and_reference_weights():
    full = MicroModule(loss="asft")
    full.configure_model()  # a trained model and a frozen reference copy of it
    n = sum(p.numel() for p in full.model.parameters())
    assert sum(flops_per_token(m) for m in top_level_models(full)) == 6 * n + 2 * n
    lora = MicroModule(loss="asft", lora=MICRO_LORA)
    lora.configure_model()  # the reference is the base itself; gradients flow through the frozen base
    adapters = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert 0 < adapters < n and sum(flops_per_token(m) for m in top_level_models(lora)) == 6 * adapters + 4 * n
