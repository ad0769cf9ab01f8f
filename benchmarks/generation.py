"""Evaluation speed: batched vs one-at-a-time generation, and answer checks per second.

Generation: 16 math500 problems x k=4 samples with SmolLM2-135M-Instruct, every sequence forced to the
same length (min_new_tokens = max_new_tokens) so both ways produce exactly the same number of tokens.
Checks: math-verify on the 500 MATH-500 gold answers (each against itself), in process and through
the guarded worker process that evaluation uses.

    python -m benchmarks.generation [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.common import SHARED_DATA, first_prompts, fixed_length_sampling, markdown_table, save
from lit_dft.batch import PromptBatch
from lit_dft.evaluation.checking import AnswerChecker, _verify
from lit_dft.models import EMBEDDED_MODEL, TINY_MODEL, load_model

MATH500 = SHARED_DATA / "math500" / "test.jsonl"


def _generate(model, tokenizer, batch, samples: int, new_tokens: int) -> int:
    torch.manual_seed(0)
    out = model.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        generation_config=fixed_length_sampling(tokenizer, samples, new_tokens),
    )
    return (out.shape[1] - batch.input_ids.shape[1]) * out.shape[0]


def generation(model_name: str, problems: int, samples: int, new_tokens: int) -> list:
    data, batch = first_prompts(model_name, "math500", MATH500, problems)
    model = load_model(model_name).eval()
    start = time.perf_counter()
    batched_tokens = _generate(model, data.tokenizer, batch, samples, new_tokens)
    batched = time.perf_counter() - start
    single_tokens, start = 0, time.perf_counter()
    for problem in data.eval_data["math500"]:
        ids = torch.tensor([problem["prompt_ids"]])
        one = PromptBatch(
            ids, torch.ones_like(ids), "math500", [problem["id"]], [problem["question"]], [problem["answers"]], [True]
        )
        for _ in range(samples):
            single_tokens += _generate(model, data.tokenizer, one, 1, new_tokens)
    single = time.perf_counter() - start
    assert single_tokens == batched_tokens
    return [
        model_name,
        f"{problems} x k={samples}, {new_tokens} new tokens each",
        f"{single:.1f} s",
        f"{batched:.1f} s",
        f"{single / batched:.1f}x",
        f"{batched_tokens / batched:,.0f}",
    ]


def checks() -> list:
    golds = [json.loads(line)["answer"] for line in MATH500.open()]
    start = time.perf_counter()
    for gold in golds:
        _verify(gold, gold)
    in_process = len(golds) / (time.perf_counter() - start)
    checker = AnswerChecker(timeout_s=5.0)
    pool = checker._worker()
    start = time.perf_counter()
    timeouts = 0
    for gold in golds:
        try:
            pool.apply_async(_verify, (gold, gold)).get(5.0)
        except Exception:  # noqa: BLE001 - counted, as evaluation would
            timeouts += 1
    guarded = len(golds) / (time.perf_counter() - start)
    checker.close()
    return [len(golds), f"{in_process:,.0f}", f"{guarded:,.0f}", f"{guarded / in_process:.2f}x", timeouts]


def main(quick: bool = False) -> str:
    model_name, problems, samples, new_tokens = (TINY_MODEL, 4, 2, 16) if quick else (EMBEDDED_MODEL, 16, 4, 128)
    generation_row = generation(model_name, problems, samples, new_tokens)
    check_row = checks()
    save("generation", {"generation": generation_row, "checks": check_row})
    return (
        markdown_table(["model", "work", "one at a time", "batched", "speed-up", "batched tokens/s"], [generation_row])
        + "\n\n"
        + markdown_table(
            ["MATH-500 gold answers", "checks/s in process", "checks/s guarded (worker process)", "ratio", "timeouts"],
            [check_row],
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    print(main(parser.parse_args().quick))
