import re

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from lit_dft.callbacks.tensorboard import LAYOUT


def _accumulator(run):
    (events,) = run.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def test_a_fit_writes_the_custom_scalars_layout_and_the_objective(dft_smoke_run):
    accumulator = _accumulator(dft_smoke_run[1])
    tensors = accumulator.Tags()["tensors"]
    (config,) = [t for t in tensors if t.startswith("custom_scalars")]
    layout = layout_pb2.Layout()
    layout.ParseFromString(accumulator.Tensors(config)[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts == {title: spec[1] for section in LAYOUT.values() for title, spec in section.items()}
    scalars = set(accumulator.Tags()["scalars"])
    for patterns in charts.values():  # every chart draws lines that the run logged
        assert any(re.fullmatch(pattern, tag) for pattern in patterns for tag in scalars), patterns
    (text,) = [t for t in tensors if t.startswith("objective")]
    assert b"DFT" in accumulator.Tensors(text)[0].tensor_proto.string_val[0]


def test_headline_histograms_open_their_section_and_categories_have_their_own(dft_smoke_run):
    histograms = _accumulator(dft_smoke_run[1]).Tags()["histograms"]
    sections: dict[str, list[str]] = {}
    for tag in histograms:
        sections.setdefault(tag.split("/")[0], []).append(tag)
    assert sorted(sections["probe"]) == ["probe/target_log10_prob_hist", "probe/target_prob_hist"]
    assert sorted(sections["train"]) == ["train/target_log10_prob_hist", "train/target_prob_hist"]
    by_run = [tag.split("/")[1] for tag in sections["vocab_category"]]
    assert by_run.count("probe") == by_run.count("train") > 4, "the categories' histograms of both"
    assert sorted(sections) == ["probe", "train", "vocab_category"], "TensorBoard expands the first two sections"
