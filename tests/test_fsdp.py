"""FSDP2 on CPU (gloo): 2 sharded processes take the same step as 1 process, and save a full checkpoint."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_dft.export import plain_model
from lit_dft.strategies import decoder_layer_classes, shard_decoder, top_level_models
from tests.conftest import micro_llama
from tests.helpers import MICRO_LORA, MicroModule
from tests.test_module import _step_delta

ROOT = Path(__file__).resolve().parents[1]


# asft: a frozen reference, sharded too, run inside the forward; with LoRA, the base with its adapters off
@pytest.mark.slow
@pytest.mark.parametrize(
    "loss, lora",
    [("dft", False), ("asft", False), ("asft", True), ("iw_sft", True)],
    ids=["dft", "asft", "asft-lora", "iw_sft-lora"],  # iw_sft: a no-grad pass over the gathered head first
)
def test_two_process_fsdp_matches_one_process_on_the_same_global_batch(tmp_path, loss, lora):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "tests.fsdp_worker", str(tmp_path), loss] + (["lora"] if lora else []),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    two = {n: weights["after"][n] - weights["before"][n] for n in weights["before"]}
    one = _step_delta(batch_size=8, accumulate=1, loss=loss, lora=lora)  # the same 8 rows, 1 process, full logits
    assert set(one) <= set(two)  # the full state dict also names the tied head
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-8, msg=name)

    checkpoint = torch.load(tmp_path / "fsdp.ckpt", weights_only=True)  # one full file, readable by `lit-dft export`
    # every weight, a reference's too: FSDP2's loader reads them strictly before the module sees the checkpoint
    assert set(checkpoint["state_dict"]) == set(weights["after"])
    for name, value in weights["after"].items():
        torch.testing.assert_close(checkpoint["state_dict"][name], value, rtol=0, atol=0, msg=name)
    assert checkpoint["hf_config"]["num_hidden_layers"] == 2

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float64).state_dict()
    after = {name.removeprefix("model."): value for name, value in weights["after"].items()}
    if lora:  # merged into the base weights (export_pretrained's merge is tested against the live model's logits)
        assert any(name.endswith("lora_A.default.weight") for name in after)
        after = plain_model(checkpoint["hf_config"], after, MICRO_LORA).state_dict()
    for name, value in exported.items():  # gathered from the shards by every rank, written by rank 0
        torch.testing.assert_close(value, after[name], rtol=0, atol=0, msg=name)


def test_decoder_layers_come_from_the_model():
    module = MicroModule()
    module.configure_model()
    (model,) = top_level_models(module)
    assert model is module.model
    assert [cls.__name__ for cls in decoder_layer_classes(model)] == ["LlamaDecoderLayer"]


def test_shard_decoder_makes_each_layer_a_unit_and_keeps_the_top_unit_gathered(monkeypatch):
    calls = []
    monkeypatch.setattr(
        "lit_dft.strategies.fully_shard", lambda module, **kwargs: calls.append((type(module).__name__, kwargs))
    )
    shard_decoder(micro_llama(), mesh="mesh", policy="policy", reshard_after_forward=True)
    assert [name for name, _ in calls] == ["LlamaDecoderLayer", "LlamaDecoderLayer", "LlamaForCausalLM"]
    assert all(kwargs["mesh"] == "mesh" and kwargs["mp_policy"] == "policy" for _, kwargs in calls)
    assert all(kwargs["reshard_after_forward"] is True for _, kwargs in calls[:2])
    assert calls[2][1]["reshard_after_forward"] is None, "the top unit must stay gathered until backward"
    calls.clear()
    shard_decoder(micro_llama().requires_grad_(False), mesh="mesh", policy="policy", reshard_after_forward=False)
    assert all(kwargs["reshard_after_forward"] is True for _, kwargs in calls), "a frozen model has no backward"
