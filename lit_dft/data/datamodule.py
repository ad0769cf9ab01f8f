"""MathDataModule: a math data set, from the hub, a local file or a package, to prompt-masked batches."""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import math
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import datasets
import torch
from datasets.fingerprint import Hasher
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lit_dft.data.collate import PadCollator, PromptCollator
from lit_dft.data.formatting import BOXED_INSTRUCTION, PromptFormatter, PromptStyle
from lit_dft.data.presets import Preset, read_row, required_columns, resolve_preset
from lit_dft.data.sampler import CountedRows, EpochResumingLoader, EpochShuffleSampler, PaddedShards
from lit_dft.data.sources import load_local, load_rows
from lit_dft.errors import LitDFTError
from lit_dft.evaluation.answers import gsm8k_to_boxed
from lit_dft.models import EMBEDDED_MODEL, load_tokenizer

_MODEL_COLUMNS = ["input_ids", "prompt_length"]
_REFERENCE = "reference_log_probs"  # the column the reference log-probabilities are carried in, once read
_ROUNDING = 1e-4  # a log-probability this far above 0 is another engine's rounding of 0
_ID_COLUMNS = ("id", "unique_id", "idx", "identifier")
_FIT_STAGES = (None, "fit", "validate")  # the stages that read the training data (and its validation split)


def _code_digest(*code) -> str:
    """A digest of the source files of ``code``. ``datasets`` hashes an importable function by its name, not its
    code, so without this an edited reader or prompt would keep loading the tokens cached before the edit."""
    try:
        files = sorted({inspect.getfile(obj) for obj in code})
        return hashlib.sha256(b"".join(Path(file).read_bytes() for file in files)).hexdigest()
    except OSError:  # no source files (a zip or bytecode-only install): the installed version stands for the code
        return importlib.metadata.version("lit-dft")


def _fingerprint(rows: datasets.Dataset, *settings) -> str:
    """The ``datasets`` fingerprint (and so the cache file) of ``rows`` transformed with ``settings`` by this code:
    the same in every process, so one process's cached result is every other's."""
    return Hasher.hash([rows._fingerprint, _CODE, *settings])


@dataclass
class EvalSet:
    """A benchmark whose problems the model answers by generation in validate/test/predict."""

    preset: str | Preset
    """Preset name or inline preset (see ``MathDataModule.preset``)."""
    path: str | None = None
    """Local file or folder; None reads the preset's hub data set."""
    limit: int | None = None
    """Evaluate only the first N problems."""
    name: str | None = None
    """Name in logs and predictions; defaults to the preset name."""

    @property
    def label(self) -> str:
        return self.name or (self.preset if isinstance(self.preset, str) else "custom")


def _eval_row(row: dict, index: int, preset: Preset) -> dict:
    normalised = read_row(row, preset)
    row_id = next((row[c] for c in _ID_COLUMNS if row.get(c) is not None), index)
    return {"id": str(row_id), "question": normalised["question"], "answers": normalised["answers"]}


def _read_training_row(row: dict, preset: Preset, reference_column: str | None) -> dict:
    """A training row normalised (see ``read_row``), with the reference's log-probabilities if there is a column."""
    normalised = read_row(row, preset)
    if reference_column is not None:
        values = row.get(reference_column)
        usable = isinstance(values, list) and len(values) > 0
        usable = usable and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v <= _ROUNDING
            for v in values
        )
        # a skipped row keeps a typed placeholder: datasets types the column from the first rows it writes
        normalised[_REFERENCE] = [min(float(v), 0.0) for v in values] if usable else [0.0]
        if not usable and not normalised["skip"]:
            normalised["skip"] = f"{reference_column} not a list of finite log-probabilities (<= 0)"
    return normalised


def _encode_rows(
    batch: dict[str, list], formatter: PromptFormatter, max_length: int, overlong: str, rewrite_gsm8k: bool
) -> dict[str, list]:
    """Token ids, prompt length and a status (ok, truncated or why dropped) for a batch of rows."""
    solutions = [gsm8k_to_boxed(s) for s in batch["solution"]] if rewrite_gsm8k else batch["solution"]
    prompts, responses = formatter.encode(batch["question"], solutions)
    references = batch.get(_REFERENCE)
    out: dict[str, list] = {"input_ids": [], "prompt_length": [], "status": []} | (
        {_REFERENCE: []} if references else {}
    )
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        status = "ok"
        if len(prompt) >= max_length:
            status = "dropped: prompt reaches max_length"
        elif references and len(references[i]) != len(response):
            status = "dropped: reference log-probs not one per response token"
        elif len(prompt) + len(response) > max_length:
            status = (
                "truncated: response cut at max_length"
                if overlong == "truncate"
                else "dropped: response exceeds max_length"
            )
        out["input_ids"].append((prompt + response)[:max_length])
        out["prompt_length"].append(len(prompt))
        out["status"].append(status)
        if references:
            out[_REFERENCE].append(references[i][: max(0, max_length - len(prompt))])
    return out


_CODE = _code_digest(_read_training_row, read_row, _encode_rows, PromptFormatter, gsm8k_to_boxed)
"""The code that turns raw rows into tokens: a part of every cached result's key."""


@dataclass
class MathDataModule(LightningDataModule):
    """Math problems with reference solutions, tokenised once and batched with the prompt masked.

    ``prepare_data`` (one process per node) reads, normalises and tokenises the training data into the ``datasets``
    cache, next to the rows ``datasets`` read from a local file or the hub; ``setup`` on the other ranks then loads
    those files instead of tokenising again. Rows a package builds in memory (CHAMP's) have no cache file: every rank
    tokenises them in ``setup``. Cached tokens are keyed by the rows, every setting that changes them, the tokenizer
    and the code that makes them, so a change of any of these tokenises afresh.
    """

    preset: str | Preset = "champ"
    """A preset name (champ, gsm8k, math500, minerva_math, olympiadbench, aime24, amc23, numina, math,
    metamath, sampled: a model's own answers from ``SampleWriter``) or an inline preset mapping the columns: {question: ..., solution: ..., answer: ...}."""
    path: str | None = None
    """Local .jsonl/.json/.parquet/.csv file or folder; None loads the preset's hub data set or package (CHAMP)."""
    val_path: str | None = None
    """Separate validation file or folder, read with the same preset. Overrides ``val_split``."""
    val_split: int | float = 0
    """Validation rows held out of the training data: a fraction (< 1) or a count; 0 for none."""
    limit: int | None = None
    """Use only this many training rows (before the validation split); None for all."""
    limit_random: bool = False
    """Take a seeded random sample of ``limit`` rows instead of the first ones."""
    seed: int = 42
    """Seed for the validation split, the random limit and the length-grouped order."""
    tokenizer_name_or_path: str = EMBEDDED_MODEL
    """Tokenizer name or path; the CLI links it to ``model.model_name_or_path``."""
    trust_remote_code: bool = False
    """Allow tokenizer code from the hub (linked to the model's setting by the CLI)."""
    prompt_style: PromptStyle = "auto"
    """``chat`` uses the tokenizer's chat template, ``plain`` the question and instruction; ``auto`` picks chat when there
    is a template. ``qwen-boxed`` is Qwen2.5-Math's evaluation prompt as the DFT paper used it (ChatML, system "You are
    a helpful assistant.", the boxed instruction), exactly, ignoring ``system_prompt`` and ``instruction``."""
    system_prompt: str | None = None
    """System message for the chat template; None keeps the template's default."""
    instruction: str | None = BOXED_INSTRUCTION
    """Sentence appended to every question; None for none."""
    boxed_answers: bool = False
    """Rewrite GSM8K's final ``#### n`` as ``\\boxed{n}`` in training targets."""
    max_length: int = 1024
    """Maximum tokens per example. Examples whose prompt alone reaches it are dropped and counted."""
    overlong: Literal["truncate", "drop"] = "truncate"
    """What to do with examples whose response does not fit: cut it at ``max_length`` or drop the example."""
    batch_size: int = 4
    """Examples per micro-batch on each device."""
    eval_batch_size: int | None = None
    """Validation batch size; None uses ``batch_size``."""
    group_by_length: bool = False
    """Batch examples of similar length together (random mega-batches sorted by length) to cut padding."""
    pad_to_multiple_of: int | None = None
    """Round padded lengths up to a multiple of this (8 helps tensor cores); None pads to the longest."""
    num_workers: int = 0
    """DataLoader worker processes."""
    num_proc: int | None = None
    """Processes for tokenisation (``datasets.map``); None tokenises in this process."""
    eval_sets: list[EvalSet] = field(default_factory=list)
    """Benchmarks answered by generation in ``test`` and ``predict`` (and ``validate`` with ``validate_benchmarks``),
    e.g. [{preset: math500, path: ../shared/data/math500/test.jsonl, limit: 20}]."""
    eval_limit: int | None = None
    """Problems per benchmark for quick runs; overrides each eval set's ``limit`` when smaller."""
    reference_log_probs_column: str | None = None
    """Column of training (and validation) rows with a reference model's log-probability of every response token,
    as lit_dft tokenises the response (end-of-turn and EOS included), e.g. the sampling model's; for ``iw_sft``
    with ``model.reference: data``. Rows without one finite value <= 0 per token are dropped and counted."""
    validate_benchmarks: bool = False
    """Also generate on the eval sets at every validation during ``fit`` (slow: one generation per problem)."""
    report: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__init__()
        self._preset = resolve_preset(self.preset)
        self.tokenizer = None
        self._raw_rows: datasets.Dataset | None = None  # read by prepare_data, held in memory: for setup
        self._prepare_error: Exception | None = None  # prepare_data's, raised in setup
        self.train_set: datasets.Dataset | None = None
        self.val_set: datasets.Dataset | None = None
        self.eval_data: dict[str, list[dict]] | None = None
        self._significant_figures: dict[str, bool] = {}  # per benchmark, from its preset

    # ---- reading -----------------------------------------------------------------------------------

    @property
    def _label(self) -> str:
        return repr(self.preset) if isinstance(self.preset, str) else "(inline)"

    def _normalise(self, raw: datasets.Dataset, source: str) -> datasets.Dataset:
        """Rows in the preset's schema to question/solution/answers; skip and count unusable rows."""
        columns = required_columns(self._preset) + [c for c in [self.reference_log_probs_column] if c is not None]
        missing = [c for c in columns if c not in raw.column_names]
        if missing:
            raise LitDFTError(
                f"{source}: missing column(s) {', '.join(missing)}; the columns are: {', '.join(raw.column_names)}"
            )
        options = {"preset": self._preset, "reference_column": self.reference_log_probs_column}
        rows = raw.map(
            _read_training_row,
            fn_kwargs=options,
            remove_columns=raw.column_names,
            num_proc=self.num_proc,
            new_fingerprint=_fingerprint(raw, "rows", options),
        )
        self.report["rows"] = self.report.get("rows", 0) + len(rows)
        for reason, count in Counter(rows["skip"]).items():
            if reason:
                self.report[f"skipped: {reason}"] = self.report.get(f"skipped: {reason}", 0) + count
        return rows.filter(lambda skip: not skip, input_columns="skip")

    def _tokenise(self, rows: datasets.Dataset) -> datasets.Dataset:
        options = {"formatter": self.formatter, "max_length": self.max_length, "overlong": self.overlong}
        options["rewrite_gsm8k"] = self.boxed_answers and self._preset.answer_format == "gsm8k"
        settings = {**options, "formatter": self._formatter_key}
        tokens = rows.map(
            _encode_rows,
            batched=True,
            fn_kwargs=options,
            num_proc=self.num_proc,
            new_fingerprint=_fingerprint(rows, "tokens", settings),
        )
        for status, count in Counter(tokens["status"]).items():
            if status != "ok":
                self.report[status] = self.report.get(status, 0) + count
        return tokens.filter(lambda status: not status.startswith("dropped"), input_columns="status")

    # ---- LightningDataModule -----------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Read, normalise and tokenise the training data once per node: Lightning calls this on local rank 0 while
        the other ranks wait, whose ``setup`` then loads the result from the ``datasets`` cache. This process keeps
        it, so a single process does the work once. Rows held in memory are only read: each rank tokenises them."""
        stage = self.trainer.state.fn if self.trainer is not None else None
        self._prepare_error = None
        try:
            self._load_tokenizer()  # a hub download or GGUF conversion, once per node too
            if stage not in _FIT_STAGES or self.train_set is not None:
                return
            raw = self._read_training_rows()
            if raw.cache_files and datasets.is_caching_enabled():
                self._setup_training(raw)
            else:  # nothing to share: every rank tokenises in setup, all at once rather than after this one
                self._raw_rows = raw
        except Exception as error:  # noqa: BLE001 - raised in setup, where the other ranks meet the same data
            self._prepare_error = error  # raising here would leave them waiting at Lightning's next barrier

    def setup(self, stage: str | None = None) -> None:
        if self._prepare_error is not None:
            error, self._prepare_error = self._prepare_error, None
            raise error
        self._load_tokenizer()
        if stage in _FIT_STAGES and self.train_set is None:
            raw, self._raw_rows = self._raw_rows, None
            self._setup_training(raw if raw is not None else self._read_training_rows())
        wants_benchmarks = stage in ("test", "predict") or (self.validate_benchmarks and stage in _FIT_STAGES)
        if wants_benchmarks and self.eval_data is None:
            self._setup_benchmarks()

    def _load_tokenizer(self) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name_or_path, self.trust_remote_code)
            self.formatter = PromptFormatter(self.tokenizer, self.prompt_style, self.system_prompt, self.instruction)
            try:  # the tokenizer, chat template, prompt style and texts: hashed before use, which may change its state
                self._formatter_key = Hasher.hash(self.formatter)
            except Exception:  # noqa: BLE001 - unhashable: as datasets does, a random key (tokenised on every rank)
                self._formatter_key = uuid.uuid4().hex

    def _read_training_rows(self) -> datasets.Dataset:
        if self._preset.solution is None and not self._preset.messages:
            raise LitDFTError(
                f"Preset {self.preset!r} has no reference solutions to train on; it is for evaluation only"
            )
        return load_rows(self.path, self._preset, f"Preset {self._label}")

    def _setup_training(self, raw: datasets.Dataset) -> None:
        source = self.path or str(self.preset)
        rows = self._normalise(raw, source)
        if len(rows) == 0:
            raise LitDFTError(f"{source}: no training examples left after filtering ({self._summary()})")
        if self.limit is not None and self.limit < len(rows):
            rows = (
                rows.shuffle(seed=self.seed).select(range(self.limit))
                if self.limit_random
                else rows.select(range(self.limit))
            )
        if self.val_path is not None:
            train_rows, val_rows = rows, self._normalise(load_local(self.val_path), self.val_path)
            if len(val_rows) == 0:
                raise LitDFTError(f"{self.val_path}: no validation examples left after filtering ({self._summary()})")
        elif self.val_split:
            if not (0 < self.val_split < 1 or 1 <= self.val_split < len(rows)):
                raise LitDFTError(
                    f"val_split={self.val_split} must be a fraction in (0, 1) or a count below the {len(rows)} rows"
                )
            split = rows.train_test_split(test_size=self.val_split, seed=self.seed)
            train_rows, val_rows = split["train"], split["test"]
        else:
            train_rows, val_rows = rows, None
        self.train_set = self._tokenise(train_rows)
        self.val_set = self._tokenise(val_rows) if val_rows is not None else None
        self.report["train examples"] = len(self.train_set)
        self.report["validation examples"] = len(self.val_set) if self.val_set is not None else 0
        rank_zero_info(f"{source}: " + ", ".join(f"{k} {v}" for k, v in self.report.items()))
        if len(self.train_set) == 0:
            raise LitDFTError(f"{source}: no training examples left after filtering ({self._summary()})")
        if self.val_set is not None and len(self.val_set) == 0:
            raise LitDFTError(f"{self.val_path or source}: no validation examples fit max_length ({self._summary()})")

    def _setup_benchmarks(self) -> None:
        """Prompts and gold answers of every eval set; problems without a question or gold answer are counted."""
        if not self.eval_sets:
            raise LitDFTError("No benchmarks to evaluate: set data.eval_sets, e.g. [{preset: math500, path: ...}]")
        self.eval_data = {}
        for spec in self.eval_sets:
            preset, label = resolve_preset(spec.preset), spec.label
            if not preset.answer:
                raise LitDFTError(f"Benchmark {label!r} has no gold answers (its preset names no answer column)")
            raw = load_rows(spec.path, preset, f"Eval set {label!r}", "its path")
            columns = [c for c in required_columns(preset, solution=False) if c not in raw.column_names]
            if columns:
                raise LitDFTError(
                    f"{label}: missing column(s) {', '.join(columns)}; the columns are: {', '.join(raw.column_names)}"
                )
            limits = [n for n in (spec.limit, self.eval_limit) if n is not None]
            if limits and min(limits) < len(raw):
                raw = raw.select(range(min(limits)))
            rows = [_eval_row(row, i, preset) for i, row in enumerate(raw)]
            usable = [row for row in rows if row["question"] and row["answers"]]
            texts = [self.formatter.prompt(r["question"]) for r in usable]
            prompts = (
                self.tokenizer(texts, add_special_tokens=self.formatter.style == "plain")["input_ids"] if texts else []
            )
            problems = [{**row, "prompt_ids": ids} for row, ids in zip(usable, prompts) if len(ids) < self.max_length]
            if not problems:
                raise LitDFTError(
                    f"Benchmark {label!r}: none of its {len(rows)} problems has a question, a gold answer "
                    f"and a prompt shorter than max_length={self.max_length}"
                )
            self.eval_data[label] = problems
            self._significant_figures[label] = preset.significant_figures
            rank_zero_info(
                f"{label}: {len(rows)} problems, {len(rows) - len(usable)} without question or gold answer, "
                f"{len(usable) - len(problems)} prompts over max_length, {len(problems)} evaluated"
            )

    @property
    def _model_columns(self) -> list[str]:
        return _MODEL_COLUMNS + ([_REFERENCE] if self.reference_log_probs_column else [])

    def _summary(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in self.report.items() if k.startswith(("rows", "skipped", "dropped")))

    @property
    def _pin_memory(self) -> bool:
        """Pin batches in page-locked host memory when they go to a CUDA device: the copy there is then asynchronous.
        On the CPU pinning would only cost a copy."""
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def _loader(self, dataset, batch_size: int, sampler=None, loader_class=DataLoader) -> DataLoader:
        return loader_class(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=PadCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of),
            pin_memory=self._pin_memory,
        )

    def _ranks(self) -> tuple[int, int]:
        """(number of ranks, this rank) for the loaders that deal each row to exactly one rank."""
        shards = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        return (shards["num_replicas"], shards["rank"]) if shards else (1, 0)

    def train_dataloader(self) -> EpochResumingLoader:
        """Stateful, so a checkpoint taken mid-epoch resumes at the next batch of the same order."""
        lengths = [len(ids) for ids in self.train_set["input_ids"]] if self.group_by_length else None
        sampler = EpochShuffleSampler(len(self.train_set), self.seed, lengths, self.batch_size)
        train_set = self.train_set.select_columns(self._model_columns)
        return self._loader(train_set, self.batch_size, sampler, loader_class=EpochResumingLoader)

    def probe_dataloader(
        self, num_examples: int, source: Literal["train", "val"] = "train", seed: int = 0, batch_size: int = 8
    ) -> DataLoader:
        """A fixed sample of ``num_examples`` training (or validation) examples, the same for every run with this
        ``seed``; each example is measured once over all ranks, every rank running the same number of batches."""
        dataset = self.train_set if source == "train" else self.val_set
        if dataset is None or len(dataset) == 0:
            raise LitDFTError(f"The probe needs {source} examples and the data has none (see data.val_split)")
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        rows = dataset.select_columns(self._model_columns).select(sorted(order[:num_examples].tolist()))
        return self._loader(CountedRows(rows), batch_size, PaddedShards(len(rows), *self._ranks()))

    def _benchmark_loaders(self) -> list[DataLoader]:
        """Each problem answered exactly once over all ranks, with the same number of batches on every rank."""
        return [
            DataLoader(
                CountedRows(problems),
                batch_size=self.eval_batch_size or self.batch_size,
                sampler=PaddedShards(len(problems), *self._ranks()),
                num_workers=self.num_workers,
                collate_fn=PromptCollator(self.tokenizer.pad_token_id, label, self._significant_figures[label]),
                pin_memory=self._pin_memory,
            )
            for label, problems in self.eval_data.items()
        ]

    def val_dataloader(self) -> list[DataLoader]:
        val_set = self.val_set.select_columns(self._model_columns) if self.val_set is not None else None
        loaders = [self._loader(val_set, self.eval_batch_size or self.batch_size)] if val_set is not None else []
        return loaders + (self._benchmark_loaders() if self.validate_benchmarks else [])

    def test_dataloader(self) -> list[DataLoader]:
        return self._benchmark_loaders()

    def predict_dataloader(self) -> list[DataLoader]:
        return self._benchmark_loaders()
