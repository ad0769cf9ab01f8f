"""Mutation check: break one behaviour at a time in a copy of the project and require a named test to fail.

Not part of the default test run (a few minutes). Run it after changing tests or behaviour::

    python -m tests.mutation_check            # every mutation
    python -m tests.mutation_check -k probe   # those whose name contains "probe"

Each mutation replaces one piece of code in ``lit_dft`` (the text must occur exactly once, so a mutation
that no longer applies fails loudly instead of passing) and runs only the tests that must catch it. When
a bug slips past the suite, add the bug here with the test that now catches it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    """Path under the project root."""
    old: str
    new: str
    tests: tuple[str, ...]
    """Test ids, at least one of which must fail."""


MUTATIONS = [
    Mutation(
        "DFT's closed-form gradient forgets the weight's floor",
        "lit_dft/objectives/probability.py",
        "        return -self._weight(target_log_probs)\n",
        "        return -torch.exp(self.alpha * target_log_probs)\n",
        ("tests/test_objectives.py::test_closed_form_log_prob_gradient_equals_autograd",),
    ),
    Mutation(
        "the collator's target positions are one place off",
        "lit_dft/data/collate.py",
        "positions = (labels[:, 1:].flatten() != IGNORE_INDEX)",
        "positions = (labels[:, :-1].flatten() != IGNORE_INDEX)",
        ("tests/test_batch.py", "tests/test_module.py::test_gradient_does_not_depend_on_how_the_batch_is_split"),
    ),
    Mutation(
        "rank-0 loading leaves the rotary buffers unfilled on the other ranks",
        "lit_dft/strategies.py",
        "                torch.distributed.broadcast(sub._buffers[name], src=0)\n",
        "                pass\n",
        (
            "tests/test_fsdp.py::test_rank0_loading_fills_every_shard_with_the_pretrained_weights_and_takes_the_same_step",
        ),
    ),
    Mutation(
        "histogram counts only the last micro-batch of an accumulation window",
        "lit_dft/callbacks/token_probs.py",
        "        if logging_step and token_outputs is not None:\n",
        "        if logging_step and token_outputs is not None:\n            self.stats = None\n",
        ("tests/callbacks/test_token_probs.py::test_histogram_counts_every_micro_batch_of_an_accumulation_window",),
    ),
    Mutation(
        "every rank measures every probe row",
        "lit_dft/data/datamodule.py",
        "PaddedShards(len(rows), *self._ranks())",
        "PaddedShards(len(rows))",
        (
            "tests/callbacks/test_token_probs.py::test_two_process_probe_measures_every_probe_token_once",
            "tests/data/test_datamodule.py::test_probe_is_the_seeded_sample_measured_once_over_the_ranks",
        ),
    ),
    Mutation(
        "score reads the k samples of a problem in the wrong order",
        "lit_dft/generation.py",
        "text = texts[i * num_samples + j]",
        "text = texts[j * len(batch.ids) + i]",
        ("tests/evaluation/test_pipeline.py::test_score_reads_the_k_samples_of_each_problem_in_order",),
    ),
    Mutation(
        "lit-dft test logs no accuracy",
        "lit_dft/module.py",
        '    def on_test_epoch_end(self) -> None:\n        self._log_benchmarks("test")',
        "    def on_test_epoch_end(self) -> None:\n        self.eval_metrics.clear()",
        ("tests/evaluation/test_pipeline.py::test_lit_dft_test_logs_each_benchmark_accuracy_and_the_mean",),
    ),
    Mutation(
        "plot-polarization plots each run's first probe",
        "lit_dft/plot.py",
        "table[name] = fractions[max(fractions)]",
        "table[name] = fractions[min(fractions)]",
        ("tests/callbacks/test_token_probs.py::test_plot_polarization_writes_each_runs_last_probe",),
    ),
    Mutation(
        "val/nll averaged per batch instead of per token",
        "lit_dft/module.py",
        "self.val_metrics[name].update(values)",
        "self.val_metrics[name].update(values.mean())",
        ("tests/test_module.py::test_validation_loss_is_a_mean_over_tokens_not_batches",),
    ),
    Mutation(
        "ExportOnFitEnd does nothing",
        "lit_dft/callbacks/export.py",
        "        weights = full_state_dict(pl_module.model)",
        "        return\n        weights = full_state_dict(pl_module.model)",
        ("tests/test_fsdp.py::test_two_process_fsdp_matches_one_process_on_the_same_global_batch[dft]",),
    ),
    Mutation(
        "a constant learning rate instead of warm-up and cosine decay",
        "lit_dft/optim.py",
        "    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)",
        "    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)",
        ("tests/test_module.py::test_learning_rate_follows_warm_up_and_cosine_and_decay_skips_biases_and_norms",),
    ),
    Mutation(
        "DFT's weight is not under stop-gradient",
        "lit_dft/objectives/probability.py",
        "weight = torch.exp(self.alpha * target_log_probs.detach())",
        "weight = torch.exp(self.alpha * target_log_probs)",
        ("tests/test_objectives.py",),
    ),
    Mutation(
        "gradients are not normalised over the global batch",
        "lit_dft/module.py",
        "        for grad in grads:\n            grad.mul_(scale)",
        "        for grad in grads:\n            grad.mul_(1.0)",
        ("tests/test_module.py::test_gradient_does_not_depend_on_how_the_batch_is_split",),
    ),
    Mutation(
        "the chunked loss's head gradient is dropped",
        "lit_dft/token_loss.py",
        "        return grad_hidden, grad_weight, None, None, None",
        "        return grad_hidden, None, None, None, None",
        ("tests/test_token_loss.py",),
    ),
    Mutation(
        "the prompt is trained",
        "lit_dft/data/collate.py",
        'labels[i, row["prompt_length"] : len(ids)] = ids[row["prompt_length"] :]',
        "labels[i, : len(ids)] = ids",
        ("tests/test_batch.py", "tests/data/test_datamodule.py"),
    ),
    Mutation(
        "the chunked pass leaves out the KL term's gradient",
        "lit_dft/token_loss.py",
        "grad_logits.sub_(reference_probs, alpha=kl_weight)",
        "grad_logits.sub_(reference_probs, alpha=0.0)",
        ("tests/test_token_loss.py::test_chunked_kl_to_a_reference_matches_naive",),
    ),
    Mutation(
        "the reference model is trained",
        "lit_dft/module.py",
        "return reference.requires_grad_(False)",
        "return reference",
        ("tests/test_module.py::test_asft_reference_is_frozen_outside_the_optimiser_and_anchors_from_zero",),
    ),
    Mutation(
        "padding problems are scored",
        "lit_dft/generation.py",
        "counted = [i for i, keep in enumerate(batch.counted) if keep]",
        "counted = list(range(len(batch.ids)))",
        ("tests/evaluation/test_pipeline.py::test_two_processes_answer_each_problem_exactly_once",),
    ),
    Mutation(
        "micro-batches draw from one running random stream (a resumed run draws other dropout masks)",
        "lit_dft/module.py",
        "        torch.manual_seed(_batch_seed(self._run_seed, epoch, batch_idx, self.global_rank))",
        "        pass",
        ("tests/test_resume.py::test_resumed_run_matches_uninterrupted_run",),
    ),
    Mutation(
        "LoRA's reference keeps the adapters on",
        "lit_dft/token_loss.py",
        "                with adapters_disabled(self.model):\n                    yield",
        "                yield",
        ("tests/test_lora.py::test_chunked_loss_gives_the_adapters_the_gradients_of_full_logits",),
    ),
    Mutation(
        "rebuilt frozen weights are not checked against the checkpoint",
        "lit_dft/checkpoints.py",
        "    if saved is None:  # a checkpoint that kept every weight",
        "    if True:",
        ("tests/test_lora.py::test_a_checkpoint_read_with_other_lora_settings_or_another_base_is_one_line",),
    ),
    Mutation(
        "--ckpt_path last looks only in the new run's folder",
        "lit_dft/cli.py",
        '        if path == "last":\n',
        "        if False:\n",
        ("tests/test_cli.py::test_sigterm_during_fit_leaves_a_checkpoint_that_resumes_to_the_same_weights",),
    ),
    Mutation(
        "a run resumed in its second epoch serves the first epoch's order",
        "lit_dft/data/sampler.py",
        "            self.sampler.set_epoch(epoch)",
        "            pass",
        ("tests/test_cli.py::test_sigterm_during_fit_leaves_a_checkpoint_that_resumes_to_the_same_weights",),
    ),
    Mutation(
        "a checkpoint of a GGUF model keeps an enum that weights_only loading refuses",
        "lit_dft/module.py",
        'checkpoint["hf_config"] = plain_config(self.model.config)',
        'checkpoint["hf_config"] = self.model.config.to_dict()',
        ("tests/test_export.py::test_gguf_model_exports_to_plain_safetensors_live_and_from_a_checkpoint",),
    ),
    Mutation(
        "iw_sft weights each token by its own ratio, not its example's mean",
        "lit_dft/token_loss.py",
        "return replace(context, sequence_log_ratio=_sequence_mean(ratio, context.sequence))",
        "return replace(context, sequence_log_ratio=ratio)",
        ("tests/test_objectives.py::test_every_objective_matches_its_paper_formula_in_value_and_logit_gradient",),
    ),
    Mutation(
        "the data's reference log-probs read one position off",
        "lit_dft/token_loss.py",
        "batch.reference_log_probs.flatten().index_select(0, targets.inputs + 1)",
        "batch.reference_log_probs.flatten().index_select(0, targets.inputs)",
        ("tests/test_token_loss.py::test_iw_sft_against_the_data_s_reference_log_probs_equals_the_reference_model",),
    ),
    Mutation(
        "the chunked loss takes the reference's log-probs from the policy",
        "lit_dft/token_loss.py",
        "reference_log_probs = target_log_probs_chunked(*reference, ids, self.chunk_size)",
        "reference_log_probs = target_log_probs_chunked(hidden, weight, ids, self.chunk_size)",
        ("tests/test_token_loss.py::test_iw_sft_weights_each_example_by_its_likelihood_ratio_to_the_reference_model",),
    ),
    Mutation(
        "skipped rows leave the reference column untyped",
        "lit_dft/data/datamodule.py",
        "if usable else [0.0]",
        "if usable else []",
        ("tests/data/test_datamodule.py::test_a_reference_column_unusable_in_its_first_thousand_rows_is_still_read",),
    ),
    Mutation(
        "the accuracy's standard error uses the population variance",
        "lit_dft/evaluation/metrics.py",
        "variance = (self.score_squares - self.score_sum**2 / n) / (n - 1)",
        "variance = (self.score_squares - self.score_sum**2 / n) / n",
        ("tests/evaluation/test_pipeline.py::test_metric_reports_mean_and_pass_at_k",),
    ),
    Mutation(
        "the top-K search misses the last, partial block",
        "lit_dft/token_loss.py",
        "    candidates = torch.cat([candidates, rows[:, blocks * _TOP_BLOCK :]], dim=1)  # the last, partial block\n",
        "",
        ("tests/test_token_loss.py::test_top_values_equal_topk_with_ties_and_a_partial_last_block",),
    ),
    Mutation(
        "SampleWriter on rank 0 writes only rank 0's samples",
        "lit_dft/callbacks/samples.py",
        "predictions = [p for rank in gathered or [] for p in rank]",
        "predictions = list(predictions)",
        ("tests/callbacks/test_samples.py::test_two_processes_sample_each_problem_once_into_one_file",),
    ),
    Mutation(
        "SampleWriter keeps duplicate answers",
        "lit_dft/callbacks/samples.py",
        "elif deduplicate and (p.benchmark, p.id, response) in seen:",
        "elif False:",
        (
            "tests/callbacks/test_samples.py::test_rejection_sampling_keeps_each_distinct_correct_answer_and_counts_the_rest",
        ),
    ),
    Mutation(
        "compare's difference is unpaired (two independent errors)",
        "lit_dft/evaluation/compare.py",
        "return estimate([b[p] - a[p] for p in shared]) if shared else None",
        "return (lambda x, y: Estimate(x.mean - y.mean, (x.stderr**2 + y.stderr**2) ** 0.5, x.n))("
        "estimate([b[p] for p in shared]), estimate([a[p] for p in shared])) if shared else None",
        (
            "tests/evaluation/test_compare.py::test_paired_difference_is_the_mean_and_standard_error_of_per_problem_differences",
        ),
    ),
]


def _run(mutation: Mutation) -> tuple[bool, float]:
    """Whether a named test failed on the mutated copy, and how long it took."""
    with tempfile.TemporaryDirectory(prefix="lit_dft_mutation_") as tmp:
        copy = Path(tmp) / "project"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".*", "runs", "lightning_logs", "__pycache__"))
        shared = ROOT.parent / "shared"
        if shared.is_dir():
            (Path(tmp) / "shared").symlink_to(shared)  # the tests read ../shared/data
        target = copy / mutation.file
        text = target.read_text()
        if text.count(mutation.old) != 1:
            raise SystemExit(
                f"mutation {mutation.name!r} no longer applies: its code occurs {text.count(mutation.old)}x"
            )
        target.write_text(text.replace(mutation.old, mutation.new))
        start = time.perf_counter()
        # run from the copy: its lit_dft comes first on sys.path, before the installed (editable) one
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "", *mutation.tests],
            cwd=copy,
            capture_output=True,
            text=True,
        )
        return result.returncode == 1, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="run only mutations whose name contains this")
    args = parser.parse_args(argv)
    selected = [m for m in MUTATIONS if args.k in m.name]
    survivors = []
    for mutation in selected:
        caught, seconds = _run(mutation)
        print(f"{'caught  ' if caught else 'SURVIVED'} {seconds:6.1f} s  {mutation.name}", flush=True)
        if not caught:
            survivors.append(mutation.name)
    print(f"{len(selected) - len(survivors)} of {len(selected)} mutations caught")
    if survivors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
