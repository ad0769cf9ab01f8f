"""Generation throughput: today's padded batches (``model.generate``) against transformers' continuous batching
(``model.generate_batch``, paged attention), on the same prompts.

32 GSM8K test problems x k=4 samples at temperature 1.0 with SmolLM2-135M-Instruct; every sequence runs to
``max_new_tokens`` (EOS disabled), so both ways generate exactly the same number of tokens.

    python -m benchmarks.continuous_batching [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import SHARED_DATA, first_prompts, fixed_length_sampling, markdown_table, save
from lit_dft.models import EMBEDDED_MODEL, TINY_MODEL, load_model

GSM8K = SHARED_DATA / "gsm8k" / "test.jsonl"


def main(quick: bool = False) -> str:
    model_name, problems, samples, new_tokens = (TINY_MODEL, 4, 2, 16) if quick else (EMBEDDED_MODEL, 32, 4, 64)
    data, batch = first_prompts(model_name, "gsm8k", GSM8K, problems)
    model = load_model(model_name).eval()
    config = fixed_length_sampling(data.tokenizer, samples, new_tokens)
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, generation_config=config)
    padded = time.perf_counter() - start
    padded_tokens = (out.shape[1] - batch.input_ids.shape[1]) * out.shape[0]
    prompts = [problem["prompt_ids"] for problem in data.eval_data["gsm8k"]]
    torch.manual_seed(0)
    start = time.perf_counter()
    results = model.generate_batch(prompts, generation_config=config, warmup=False)
    continuous = time.perf_counter() - start
    continuous_tokens = sum(len(r.generated_tokens) for r in results.values())
    assert padded_tokens == continuous_tokens == problems * samples * new_tokens, (padded_tokens, continuous_tokens)
    row = [
        model_name,
        f"{problems} x k={samples}, {new_tokens} new tokens each",
        f"{padded:.1f} s",
        f"{continuous:.1f} s",
        f"{padded / continuous:.2f}x",
        f"{padded_tokens / padded:,.0f}",
        f"{continuous_tokens / continuous:,.0f}",
    ]
    save("continuous_batching", {"row": row})
    header = [
        "model",
        "work",
        "padded batch",
        "continuous batching",
        "speed-up",
        "padded tokens/s",
        "continuous tokens/s",
    ]
    return markdown_table(header, [row])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    print(main(parser.parse_args().quick))
