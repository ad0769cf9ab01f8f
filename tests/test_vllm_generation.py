"""The vLLM backend against a fake engine (vLLM needs a GPU): the prompts, stop tokens, sampling settings and
weights it is given, and the order of the answers it returns."""

import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_dft.cli import main
from lit_dft.data import MathDataModule
from lit_dft.data.datamodule import EvalSet
from lit_dft.errors import LitDFTError
from lit_dft.generation import GenerationArgs, stop_token_ids
from lit_dft.models import TINY_MODEL, load_model, load_tokenizer
from tests.conftest import SHARED_DATA


@dataclass
class _Completion:
    index: int
    token_ids: list[int]


@dataclass
class _Request:
    outputs: list[_Completion]


class _FakeEngine:
    """Answers prompt p's sample j with "\\boxed{<len(p)>.<j>}" and EOS; the samples come back in reverse order."""

    made: list = []

    def __init__(self, model: str, tokenizer: str, seed: int, **kwargs) -> None:
        self.model, self.seed, self.kwargs, self.prompts, self.params = model, seed, kwargs, [], []
        self.weights = AutoModelForCausalLM.from_pretrained(model).state_dict()  # what the engine would serve
        self._tokenizer = load_tokenizer(tokenizer)
        _FakeEngine.made.append(self)

    def generate(self, prompts, params, use_tqdm=True):
        self.prompts += [p["prompt_token_ids"] for p in prompts]
        self.params.append(params)
        eos = self._tokenizer.eos_token_id
        return [
            _Request(
                [
                    _Completion(j, self._tokenizer.encode(f"\\boxed{{{len(p['prompt_token_ids'])}.{j}}}") + [eos])
                    for j in reversed(range(params.n))
                ]
            )
            for p in prompts
        ]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.SimpleNamespace(LLM=_FakeEngine, SamplingParams=lambda **kwargs: types.SimpleNamespace(**kwargs))
    monkeypatch.setitem(sys.modules, "vllm", module)
    _FakeEngine.made.clear()
    return _FakeEngine


def _problems(n: int = 3):
    data = MathDataModule(
        tokenizer_name_or_path=TINY_MODEL, eval_sets=[EvalSet("gsm8k", str(SHARED_DATA / "gsm8k/test.jsonl"), limit=n)]
    )
    data.eval_batch_size = n
    data.setup("test")
    (loader,) = data.test_dataloader()
    return data, next(iter(loader))


def test_the_engine_gets_the_unpadded_prompts_stop_tokens_sampling_and_weights(fake_vllm):
    from lit_dft.vllm_generation import VLLMGenerator

    data, batch = _problems()
    assert batch.attention_mask.min() == 0, "prompts of different lengths: some are left-padded"
    model = load_model(TINY_MODEL)
    sampling = GenerationArgs(max_new_tokens=7, num_samples=2, temperature=0.8, top_p=0.9)
    generator = VLLMGenerator(model, data.tokenizer, seed=3, engine_args={"gpu_memory_utilization": 0.5})
    texts = generator(batch, sampling)
    (engine,) = fake_vllm.made
    prompts = [p["prompt_ids"] for p in data.eval_data["gsm8k"]]
    assert engine.prompts == prompts
    assert texts == [f"\\boxed{{{len(p)}.{j}}}" for p in prompts for j in range(2)]  # problem-major, no EOS text
    params = vars(engine.params[0])
    assert params == {
        "n": 2,
        "temperature": 0.8,
        "top_p": 0.9,
        "max_tokens": 7,
        "stop_token_ids": stop_token_ids(model, data.tokenizer),
    }
    assert (engine.seed, engine.kwargs) == (3, {"gpu_memory_utilization": 0.5})
    for name, value in model.state_dict().items():
        torch.testing.assert_close(engine.weights[name], value, msg=name)
    assert not Path(engine.model).exists(), "the exported weights go once the engine has loaded them"


def test_greedy_decoding_ignores_top_p(fake_vllm):
    from lit_dft.vllm_generation import VLLMGenerator

    data, batch = _problems(1)
    generator = VLLMGenerator(load_model(TINY_MODEL), data.tokenizer)
    generator(batch, GenerationArgs(temperature=0.0, top_p=0.5))
    assert (fake_vllm.made[0].params[0].temperature, fake_vllm.made[0].params[0].top_p) == (0.0, 1.0)


def test_lit_dft_test_with_the_vllm_backend_scores_its_answers(fake_vllm, tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    args = ["test", "--config", "configs/eval.yaml", "--model.model_name_or_path=tiny", "--data.eval_limit=2"]
    args += ["--model.generation.backend=vllm", f"--trainer.default_root_dir={tmp_path}"]
    main([*args, f"--trainer.callbacks.init_args.path={predictions}"])
    (engine,) = fake_vllm.made  # one engine for every benchmark
    lines = predictions.read_text().splitlines()
    assert len(lines) == len(engine.prompts) == 12 and all('"generation": "\\\\boxed{' in line for line in lines)


def test_without_vllm_installed_it_is_one_line(monkeypatch):
    from lit_dft.vllm_generation import VLLMGenerator

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(LitDFTError, match=r"needs vLLM: pip install 'lit-dft\[vllm\]'"):
        VLLMGenerator(load_model(TINY_MODEL), load_tokenizer(TINY_MODEL))


def test_settings_lit_dft_owns_or_fit_validations_are_refused(fake_vllm):
    from lit_dft.module import CausalLMModule
    from lit_dft.vllm_generation import VLLMGenerator

    data, batch = _problems(1)
    with pytest.raises(LitDFTError, match="vllm_args cannot set seed, tokenizer"):
        VLLMGenerator(load_model(TINY_MODEL), data.tokenizer, engine_args={"seed": 1, "tokenizer": "x"})
    module = CausalLMModule.from_model(load_model(TINY_MODEL), data.tokenizer, generation={"backend": "vllm"})
    module._trainer = types.SimpleNamespace(state=types.SimpleNamespace(fn="fit"), world_size=1)
    with pytest.raises(LitDFTError, match="not in fit's validations"):
        module._generate(batch)
    module._trainer.state.fn = "test"
    assert len(module._generate(batch)) == 1 and fake_vllm.made
    module._trainer.state.fn = "fit"  # an engine left from an evaluation is not used by a fit either
    with pytest.raises(LitDFTError, match="not in fit's validations"):
        module._generate(batch)
