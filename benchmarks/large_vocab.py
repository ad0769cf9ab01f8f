"""lit_dft vs TRL's SFTTrainer(loss_type="dft") where the vocabulary dominates: Qwen2.5's 151,936 entries on a
small-width model, sequences of 1024 tokens. Peak RSS and training tokens/s.

Qwen2.5-Math-1.5B's output head is 151,936 x 1536; here it is 151,936 x 256 on a 2-layer Qwen2 (random weights,
tied embeddings), so the loss over the vocabulary is most of the work and of the memory, as in fine-tuning a
small model with a large vocabulary. The rows are GSM8K questions with several training solutions as the answer,
cut at 1024 tokens by both trainers (every sequence is 1024 tokens long: no padding). Otherwise the setting of
``benchmarks.trl_compare``: float32, AdamW, the same steps; each run a fresh process, runs alternating, medians.

    python -m benchmarks.large_vocab [--quick]      # needs: pip install -e '.[bench]'
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from benchmarks.common import markdown_table, run_worker, save
from benchmarks.trl_compare import GSM8K, comparison_header, comparison_row

VOCAB, HIDDEN, LAYERS, LENGTH, BATCH = 151_936, 256, 2, 1024, 2
_SOLUTIONS_PER_ROW = 8  # GSM8K solutions are ~130 tokens: eight exceed 1024 with the question


def _model_folder(root: Path) -> Path:
    """A random Qwen2 of the benchmark's shape with the tiny model's tokenizer (its ids lie in the vocabulary)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lit_dft.models import TINY_MODEL, load_tokenizer

    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    folder = root / "qwen-vocab"
    Qwen2ForCausalLM(config).save_pretrained(folder)
    load_tokenizer(TINY_MODEL).save_pretrained(folder)
    return folder


def _long_rows(root: Path, n: int) -> Path:
    """GSM8K rows whose answer is the row's own solution after those of the next rows (one final answer)."""
    rows = [json.loads(line) for _, line in zip(range(n + _SOLUTIONS_PER_ROW), GSM8K.open())]
    path = root / "long_rows.jsonl"
    with path.open("w") as out:
        for i in range(n):
            steps = [r["answer"].split("####")[0].strip() for r in rows[i + 1 : i + _SOLUTIONS_PER_ROW]]
            out.write(json.dumps({"question": rows[i]["question"], "answer": "\n".join(steps + [rows[i]["answer"]])}))
            out.write("\n")
    return path


def main(quick: bool = False) -> str:
    steps, rounds = (3, 1) if quick else (6, 2)
    root = Path(tempfile.mkdtemp())
    model, data = _model_folder(root), _long_rows(root, BATCH * steps)
    results = {"lit_dft": [], "trl": []}
    for _ in range(rounds):
        for system in results:
            args = (system, str(model), str(steps), str(BATCH), str(LENGTH), str(data))
            results[system].append(run_worker("benchmarks.trl_compare", *args))
    shape = {"vocab": VOCAB, "hidden": HIDDEN, "layers": LAYERS, "batch": BATCH, "length": LENGTH, "steps": steps}
    save("large_vocab", {**shape, "results": results})
    row = comparison_row(f"{VOCAB:,} x {HIDDEN}, {LAYERS} layers", f"{BATCH} x {LENGTH}, {steps} steps", results)
    return markdown_table(comparison_header("vocabulary x width", rss_goal=0.5), [row]) + "\n\n" + _NOTE


_NOTE = (
    "Peak RSS is the whole process's, about 450 MB of it the imports (torch, transformers, Lightning or TRL) and 650 MB "
    "the model's float32 weights, gradients and AdamW state, which both runs hold alike; the rest is the loss. TRL "
    "computes the batch's full logits (2,048 x 151,936 floats, 1.2 GB, and their softmax and gradient); lit_dft "
    "projects 220 tokens at a time (128 MB of logits) and keeps a float32 head gradient (156 MB)."
)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    print(main(parser.parse_args().quick))
