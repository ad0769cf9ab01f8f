"""``prepare_data`` tokenises once into the ``datasets`` cache; ``setup`` on every other rank loads it from there."""

import json
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
from lightning.pytorch.trainer.states import TrainerFn

import lit_dft.data.datamodule as datamodule
from lit_dft.data import MathDataModule
from lit_dft.data.sources import PACKAGES
from lit_dft.errors import LitDFTError
from lit_dft.models import TINY_MODEL
from tests.helpers import run_worker


def _module(**kwargs) -> MathDataModule:
    return MathDataModule(**{"preset": "gsm8k", "tokenizer_name_or_path": TINY_MODEL, "val_split": 5, **kwargs})


def _use_cache(monkeypatch, folder: Path) -> None:
    """An empty ``datasets`` cache, as on a fresh node (the files read and every map result land there)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(folder))


@pytest.fixture
def data(tmp_path, shared_data) -> str:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(open(shared_data / "gsm8k/train.jsonl").readlines()[:30]))
    return str(path)


@pytest.fixture
def tokenised(monkeypatch) -> list[int]:
    """Rows tokenised in this process, batch by batch: a cache hit adds none."""
    counts, encode = [], datamodule._encode_rows

    def counting(batch, **kwargs):
        counts.append(len(batch["question"]))
        return encode(batch, **kwargs)

    monkeypatch.setattr(datamodule, "_encode_rows", counting)
    return counts


def _tokens(dm: MathDataModule) -> tuple[list, list]:
    return dm.train_set["input_ids"], dm.val_set["input_ids"]


def test_setup_after_prepare_data_loads_the_tokens_from_the_cache(tmp_path, monkeypatch, data, tokenised):
    _use_cache(monkeypatch, tmp_path / "cache-alone")
    alone = _module(path=data)  # the path without prepare_data, in a cache of its own
    alone.setup("fit")
    assert sum(tokenised) == 30

    _use_cache(monkeypatch, tmp_path / "cache")
    rank0 = _module(path=data)
    rank0.prepare_data()
    rank0.setup("fit")
    assert sum(tokenised) == 60, "prepare_data tokenised every row once, its own setup none again"
    other = _module(path=data)  # another rank: its own module, the node's cache
    other.setup("fit")
    assert sum(tokenised) == 60, "another rank's setup tokenises nothing"
    assert _tokens(other) == _tokens(rank0) == _tokens(alone)
    assert other.report == rank0.report == alone.report
    assert other.train_set.cache_files == rank0.train_set.cache_files
    assert all(f["filename"].startswith(str(tmp_path / "cache")) for f in other.train_set.cache_files)


@pytest.mark.parametrize(
    "change",
    [
        {"max_length": 150},
        {"prompt_style": "plain"},
        {"system_prompt": "Be brief."},
        {"instruction": None},
        {"boxed_answers": True},
        {"seed": 7},
    ],
    ids=lambda change: ",".join(change),
)
def test_a_setting_that_changes_the_tokens_tokenises_afresh(tmp_path, monkeypatch, data, tokenised, change):
    _use_cache(monkeypatch, tmp_path / "cache")
    prepared = _module(path=data)
    prepared.prepare_data()
    done = len(tokenised)
    changed = _module(path=data, **change)
    changed.setup("fit")
    assert len(tokenised) > done
    assert _tokens(changed) != _tokens(prepared)
    if "max_length" in change:
        assert max(len(ids) for ids in changed.train_set["input_ids"]) <= 150
        assert changed.report != prepared.report  # the truncated or dropped rows are counted afresh too


def test_dropping_overlong_rows_is_not_served_the_truncated_ones(tmp_path, monkeypatch, data, tokenised):
    _use_cache(monkeypatch, tmp_path / "cache")
    truncating = _module(path=data, max_length=150, val_split=0)
    truncating.prepare_data()
    done = len(tokenised)
    dropping = _module(path=data, max_length=150, val_split=0, overlong="drop")
    dropping.setup("fit")
    assert len(tokenised) > done
    cut = truncating.report["truncated: response cut at max_length"]
    assert dropping.report["dropped: response exceeds max_length"] == cut > 0
    assert len(dropping.train_set) == len(truncating.train_set) - cut


def test_edited_code_tokenises_afresh(tmp_path, monkeypatch, data, tokenised):
    """datasets hashes an importable function by its name: the cache key has a digest of the code that tokenises."""
    _use_cache(monkeypatch, tmp_path / "cache")
    _module(path=data).prepare_data()
    done = len(tokenised)
    monkeypatch.setattr(datamodule, "_CODE", "an edited prompt")
    _module(path=data).setup("fit")
    assert len(tokenised) > done


def test_rows_held_in_memory_are_read_by_prepare_data_and_tokenised_by_setup(tmp_path, monkeypatch, tokenised):
    """A package's rows have no cache file to share: each rank tokenises them, this one without reading them twice."""
    _use_cache(monkeypatch, tmp_path / "cache")
    reads, load = [], PACKAGES["champ-dataset"]
    monkeypatch.setitem(PACKAGES, "champ-dataset", lambda: reads.append(1) or load())
    dm = _module(preset="champ", limit=20, val_split=0, max_length=256)
    dm.prepare_data()
    assert (len(reads), tokenised) == (1, [])
    dm.setup("fit")
    assert len(reads) == 1 and sum(tokenised) == 20 and len(dm.train_set) == 20
    alone = _module(preset="champ", limit=20, val_split=0, max_length=256)
    alone.setup("fit")
    assert alone.train_set["input_ids"] == dm.train_set["input_ids"]


@pytest.mark.parametrize("stage", [TrainerFn.TESTING, TrainerFn.PREDICTING])
def test_prepare_data_reads_no_training_data_to_test_or_predict(stage):
    dm = _module(path="nowhere.jsonl")  # reading it would fail
    dm.trainer = SimpleNamespace(state=SimpleNamespace(fn=stage))
    dm.prepare_data()
    assert dm.train_set is None and dm.tokenizer is not None


@pytest.mark.slow
def test_two_ranks_tokenise_once(tmp_path, data):
    """Lightning runs prepare_data on rank 0 while rank 1 waits; rank 1's setup loads rank 0's tokens."""
    run = run_worker("tests.data.prepare_worker", str(tmp_path), data, HF_DATASETS_CACHE=str(tmp_path / "cache"))
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["hooks"] for r in ranks] == [["prepare_data", "setup"], ["setup"]]
    assert ranks[0]["tokenised"] == {"prepare_data": 30, "setup": 0}  # all before rank 1's setup began
    assert ranks[1]["tokenised"] == {"prepare_data": 0, "setup": 0}
    assert ranks[0]["train"] == ranks[1]["train"] and ranks[0]["val"] == ranks[1]["val"]
    assert len(ranks[1]["train"]) == 26 and len(ranks[1]["val"]) == 4  # val_split=4


def test_a_data_error_in_prepare_data_is_raised_in_setup_where_every_rank_meets_it(tmp_path, monkeypatch):
    """Raised in ``prepare_data`` (one process per node), it would leave the other ranks at Lightning's next barrier
    until the collective timeout; in ``setup`` every rank stops at the same data with the same message."""
    _use_cache(monkeypatch, tmp_path / "cache")
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    rank0 = _module(path=str(path))
    rank0.prepare_data()  # no error here
    with pytest.raises(LitDFTError, match="missing column"):
        rank0.setup("fit")
    with pytest.raises(LitDFTError, match="missing column"):
        _module(path=str(path)).setup("fit")  # another rank, the same message
