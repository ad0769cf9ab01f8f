from dataclasses import replace

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.data._utils.pin_memory import pin_memory

from lit_dft.batch import IGNORE_INDEX, PromptBatch, TokenOutputs, TrainingBatch
from lit_dft.data import PadCollator, PromptCollator


def test_training_batch_shifts_labels_once_and_moves_as_lightning_moves_batches():
    batch = PadCollator(pad_token_id=0)(
        [{"input_ids": [5, 6, 7, 8], "prompt_length": 2}, {"input_ids": [9, 10], "prompt_length": 1}]
    )
    assert batch.targets.tolist() == [[IGNORE_INDEX, 7, 8], [10, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch.target_positions.tolist() == [1, 2, 3]  # the trained places of the flat targets, from the host
    assert torch.equal(batch.positions(), replace(batch, target_positions=None).positions())
    assert int(batch.num_tokens) == 6
    moved = move_data_to_device(batch, torch.device("cpu"))  # what the strategies call on every batch
    assert isinstance(moved, TrainingBatch) and torch.equal(moved.labels, batch.labels)


def test_batches_pin_their_tensors_for_the_loader_and_move_to_a_gpu_without_blocking(monkeypatch):
    """A DataLoader with ``pin_memory=True`` pins what has a ``pin_memory()`` and leaves other dataclasses unpinned;
    a CPU-only torch can neither pin nor copy to a GPU, so both are recorded instead."""
    pinned, copies = [], []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t) or t)
    monkeypatch.setattr(torch.Tensor, "to", lambda t, device, **kwargs: copies.append((str(device), kwargs)) or t)
    batch = PadCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "prompt_length": 1}])
    batch = pin_memory(batch)  # what the DataLoader's pinning thread calls
    assert isinstance(batch, TrainingBatch) and len(pinned) == 4  # ids, mask, labels, target positions
    for device, non_blocking in (("cuda:0", True), ("cpu", False)):
        moved = move_data_to_device(batch, torch.device(device))
        assert isinstance(moved, TrainingBatch) and copies[-4:] == [(device, {"non_blocking": non_blocking})] * 4
    prompts = PromptCollator(pad_token_id=0, benchmark="toy")(
        [{"prompt_ids": [4], "id": "a", "question": "q", "answers": ["1"]}]
    )
    assert isinstance(pin_memory(prompts), PromptBatch) and len(pinned) == 6


def test_padding_rows_of_an_even_split_train_nothing():
    rows = [
        {"input_ids": [5, 6, 7], "prompt_length": 1, "counted": True},
        {"input_ids": [5, 6, 7], "prompt_length": 1, "counted": False},
    ]
    batch = PadCollator(pad_token_id=0)(rows)
    assert (batch.targets[0] != IGNORE_INDEX).sum() == 2 and (batch.targets[1] == IGNORE_INDEX).all()


def test_prompt_batch_carries_what_scoring_needs():
    rows = [
        {"prompt_ids": [4, 5, 6], "id": "a", "question": "1?", "answers": ["1"], "counted": True},
        {"prompt_ids": [7], "id": "b", "question": "2?", "answers": ["2"], "counted": False},
    ]
    batch = PromptCollator(pad_token_id=0, benchmark="toy", significant_figures=True)(rows)
    assert isinstance(batch, PromptBatch) and batch.input_ids.tolist() == [[4, 5, 6], [0, 0, 7]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert (batch.ids, batch.questions, batch.answers, batch.counted, batch.significant_figures) == (
        ["a", "b"],
        ["1?", "2?"],
        [["1"], ["2"]],
        [True, False],
        True,
    )


def test_callbacks_get_the_token_outputs_of_a_step_with_the_loss_detached():
    loss = torch.tensor(2.0, requires_grad=True) * 1
    mask = torch.tensor([[False, True]])
    out = TokenOutputs(
        loss, torch.tensor([[0.0, -0.5]]), mask, torch.tensor([[IGNORE_INDEX, 3]]), torch.tensor([[0.0, 2.0]])
    )
    step = out.step_output()
    assert step["loss"] is loss  # what Lightning back-propagates
    seen = TokenOutputs.of(step)
    assert seen is not None and not seen.loss.requires_grad and seen.log_probs.tolist() == [-0.5]
    assert TokenOutputs.of(out) is out  # validation returns the outputs themselves
    assert TokenOutputs.of({"loss": loss}) is None and TokenOutputs.of([]) is None
