"""FSDP2 on CPU (gloo): 2 sharded processes take the same step as 1 process, and save a full checkpoint."""

from itertools import chain
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_dft.errors import LitDFTError
from lit_dft.export import plain_model
from lit_dft.models import EMBEDDED_MODEL, TINY_MODEL, load_model, load_model_on_rank0
from lit_dft.strategies import decoder_layer_classes, shard_decoder, top_level_models
from tests.conftest import micro_llama
from tests.helpers import MICRO_LORA, MicroModule, loader, run_worker, uneven_rows
from tests.rank0_worker import non_persistent_buffers
from tests.test_module import _step_delta


# asft: a frozen reference, sharded too, run inside the forward; with LoRA, the base with its adapters off
@pytest.mark.slow
@pytest.mark.parametrize(
    "loss, lora",
    [("dft", False), ("asft", False), ("asft", True), ("iw_sft", True)],
    ids=["dft", "asft", "asft-lora", "iw_sft-lora"],  # iw_sft: a no-grad pass over the gathered head first
)
def test_two_process_fsdp_matches_one_process_on_the_same_global_batch(tmp_path, loss, lora):
    run = run_worker("tests.fsdp_worker", str(tmp_path), loss, *(["lora"] if lora else []))
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


def _rank0_worker(out: Path, *args: str) -> list[dict]:
    out.mkdir()
    run = run_worker("tests.rank0_worker", str(out), *args)
    assert run.returncode == 0, run.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


def _pretrained_name(name: str) -> str | None:
    """The loaded model's name for a module's weight (the model's, the reference's, a LoRA model's base); None for
    an adapter."""
    if "lora_" in name:
        return None
    return name.split(".", 1)[1].removeprefix("base_model.model.").replace(".base_layer", "")


def _assert_loaded(records: list[dict], pretrained: torch.nn.Module) -> None:
    """Rank 1 built the model on meta and rank 0 loaded it; the shards hold ``pretrained``'s weights, the tied head
    is its embedding and the rotary buffers are ``pretrained``'s, on both ranks."""
    rank0, rank1 = records
    assert rank1["built_on_meta"] and not rank0["built_on_meta"], "only rank 0 reads the weights"
    weights, buffers = pretrained.state_dict(), non_persistent_buffers(pretrained)
    assert {_pretrained_name(name) for name in rank0["before"]} - {None} == set(weights), "the tied head included"
    for name, value in rank0["before"].items():  # gathered from both ranks' shards
        if _pretrained_name(name) is not None:
            torch.testing.assert_close(value, weights[_pretrained_name(name)], rtol=0, atol=0, msg=name)
    for rank, record in enumerate(records):
        assert record["tied"] == [True] * len(record["tied"]), f"rank {rank}: the head is the embedding"
        assert len(record["buffers"]) == 2 * len(record["tied"])  # rotary inv_freq and original_inv_freq
        for name, value in record["buffers"].items():
            (expected,) = [buffer for key, buffer in buffers.items() if name.endswith("." + key)]
            torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=f"rank {rank}: {name}")


# sft: the step's loss has a closed form; asft: a frozen reference copy, sharded and filled too; LoRA: the adapters
@pytest.mark.slow
@pytest.mark.parametrize("loss, lora", [("sft", False), ("asft", False), ("asft", True)], ids=["sft", "asft", "lora"])
def test_rank0_loading_fills_every_shard_with_the_pretrained_weights_and_takes_the_same_step(tmp_path, loss, lora):
    rank0, rank1 = _rank0_worker(tmp_path / "rank0", loss, "True", *(["lora"] if lora else []))
    today = _rank0_worker(tmp_path / "everywhere", loss, "False", *(["lora"] if lora else []))  # without rank-0 loading
    pretrained = load_model(TINY_MODEL)
    _assert_loaded([rank0, rank1], pretrained)
    assert not today[1]["built_on_meta"]
    reference = loss == "asft" and not lora  # a copy of the initial weights (LoRA: the base, adapters off)
    assert {name.split(".")[0] for name in rank0["before"]} == (
        {"model", "reference_model"} if reference else {"model"}
    )
    for name, value in rank0["before"].items():
        torch.testing.assert_close(value, today[0]["before"][name], rtol=0, atol=0, msg=name)  # LoRA's A and B too

    torch.testing.assert_close(rank0["loss"], today[0]["loss"], rtol=0, atol=0)
    for name, value in rank0["after"].items():
        torch.testing.assert_close(value, today[0]["after"][name], rtol=0, atol=0, msg=name)
    assert any(not torch.equal(rank0["after"][n], rank0["before"][n]) for n in rank0["before"]), "the step moved"
    assert set(rank0["validated"]) == set(rank0["after"])  # validate --ckpt_path: the checkpoint wins over rank 0's
    for name, value in rank0["validated"].items():
        torch.testing.assert_close(value, rank0["after"][name], rtol=0, atol=0, msg=name)
    if loss == "sft":  # the global batch's token mean of -log p under the pretrained weights
        batch = next(iter(loader(uneven_rows(), batch_size=8)))
        logits = pretrained(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch.labels[:, 1:].flatten())
        torch.testing.assert_close(rank0["loss"], expected, rtol=1e-5, atol=0)


@pytest.mark.slow
def test_rank0_loading_of_a_gguf_model_dequantises_it_on_rank_0_only(tmp_path):
    _assert_loaded(_rank0_worker(tmp_path / "gguf", EMBEDDED_MODEL), load_model(EMBEDDED_MODEL))


def _as_rank(monkeypatch, rank: int, channel: list) -> None:
    """A stand-in process group: as rank 0, broadcasts go into ``channel``; as another rank, they come from it."""
    monkeypatch.setattr("torch.distributed.get_rank", lambda: rank)

    def broadcast(objects: list, src: int = 0) -> None:
        if rank == 0:
            channel[:] = objects
        else:
            objects[:] = channel

    monkeypatch.setattr("torch.distributed.broadcast_object_list", broadcast)
    monkeypatch.setattr("torch.distributed.get_world_size", lambda: 2)
    monkeypatch.setattr("torch.distributed.all_gather_object", lambda out, obj: out.__setitem__(slice(None), [obj] * 2))


def test_other_ranks_build_rank0s_model_on_meta_without_loading_it(monkeypatch):
    loaded = load_model(TINY_MODEL, "bfloat16")
    loaded.model.norm.float()  # a module that from_pretrained keeps in float32 (from_config would not)
    loaded.generation_config.eos_token_id = [2, 7]
    monkeypatch.setattr("lit_dft.models.load_model", lambda *args: loaded)
    channel = []
    _as_rank(monkeypatch, 0, channel)
    assert load_model_on_rank0(TINY_MODEL, "bfloat16") is loaded
    monkeypatch.setattr("lit_dft.models.load_model", None)  # the other ranks read no weights (a GGUF: no dequantising)
    _as_rank(monkeypatch, 1, channel)
    meta = load_model_on_rank0(TINY_MODEL, "bfloat16")
    assert {n: (t.shape, t.dtype) for n, t in meta.state_dict().items()} == {
        n: (t.shape, t.dtype) for n, t in loaded.state_dict().items()
    }
    assert all(t.is_meta for t in chain(meta.parameters(), meta.buffers()))
    assert meta.lm_head.weight is meta.model.embed_tokens.weight
    assert meta.generation_config.eos_token_id == [2, 7] and meta.training


def test_a_model_that_rank0s_config_does_not_rebuild_is_refused_on_every_rank(monkeypatch):
    channel = []
    _as_rank(monkeypatch, 0, channel)
    load_model_on_rank0(TINY_MODEL)
    config, generation_config, dtype, specs = channel[0]
    specs["lm_head.weight"] = (torch.float32, torch.Size([7, 64]))  # rank 0 loaded a head of another shape
    _as_rank(monkeypatch, 1, channel)
    with pytest.raises(LitDFTError, match="built from rank 0's config is not the model rank 0 loaded .* shapes"):
        load_model_on_rank0(TINY_MODEL)


def test_a_load_error_on_rank0_reaches_the_other_ranks(monkeypatch):
    channel = []
    _as_rank(monkeypatch, 0, channel)
    with pytest.raises(LitDFTError, match="GGUF file not found"):
        load_model_on_rank0("/no/such/model.gguf")
    _as_rank(monkeypatch, 1, channel)  # rather than wait for the config until the timeout
    with pytest.raises(LitDFTError, match="Global rank 0 could not load '/no/such/model.gguf': GGUF file not found"):
        load_model_on_rank0("/no/such/model.gguf")


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
