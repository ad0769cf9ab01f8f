import csv
import json
import statistics

import pytest
import torch

from lit_dft.cli import main
from lit_dft.evaluation import MathAccuracy
from lit_dft.evaluation.compare import Z95, average, compare, estimate, read_run


def _write(path, correct_by_problem: dict[str, list[bool]], benchmark: str = "toy") -> str:
    with open(path, "w") as handle:
        for problem, samples in correct_by_problem.items():
            for j, correct in enumerate(samples):
                record = {"benchmark": benchmark, "id": problem, "sample": j, "correct": correct, "generation": "..."}
                handle.write(json.dumps(record) + "\n")
    return str(path)


BASE = {"a": [True, False], "b": [False, False], "c": [True, True], "d": [False, True], "e": [False, False]}
BETTER = {"a": [True, True], "b": [False, True], "c": [True, True], "d": [True, True], "e": [False, False]}


def test_accuracy_and_its_standard_error_equal_math_accuracy_on_the_same_samples(tmp_path):
    run = read_run(_write(tmp_path / "p.jsonl", BASE))
    (row,) = compare([run])
    metric = MathAccuracy()
    metric.update(torch.tensor(list(BASE.values())))
    expected = metric.compute()
    assert row.accuracy.mean == pytest.approx(expected["acc"].item())
    assert row.accuracy.stderr == pytest.approx(expected["acc_stderr"].item(), rel=1e-6)
    assert (row.accuracy.n, row.samples) == (5, 10)


def test_paired_difference_is_the_mean_and_standard_error_of_per_problem_differences(tmp_path):
    base, better = (
        read_run(f"base={_write(tmp_path / 'a.jsonl', BASE)}"),
        read_run(f"better={_write(tmp_path / 'b.jsonl', BETTER)}"),
    )
    rows = compare([base, better])
    (difference,) = [r.difference for r in rows if r.run == "better"]
    # problem scores: base (.5, 0, 1, .5, 0), better (1, .5, 1, 1, 0): differences (.5, .5, 0, .5, 0)
    d = [0.5, 0.5, 0.0, 0.5, 0.0]
    assert difference.mean == pytest.approx(statistics.mean(d))
    assert difference.stderr == pytest.approx(statistics.stdev(d) / len(d) ** 0.5)
    low, high = difference.interval
    assert low == pytest.approx(0.3 - Z95 * statistics.stdev(d) / 5**0.5) and high > low
    # pairing removes the problems' own spread: narrower than the two runs' errors combined
    unpaired = (rows[0].accuracy.stderr ** 2 + rows[1].accuracy.stderr ** 2) ** 0.5
    assert difference.stderr < unpaired


def test_standard_error_closed_form_and_average_over_benchmarks():
    one = estimate([1.0, 0.0, 0.0, 1.0])
    assert (one.mean, one.stderr) == (0.5, pytest.approx((1 / 3) ** 0.5 / 2))
    assert estimate([0.25]).stderr == 0.0
    mean = average([one, estimate([1.0, 1.0])])
    assert mean.mean == 0.75 and mean.stderr == pytest.approx(one.stderr / 2) and mean.n == 6


def test_seeds_of_one_run_pool_their_samples_and_the_difference_pairs_shared_problems(tmp_path):
    seed_1 = _write(tmp_path / "s1.jsonl", {"a": [True], "b": [False]})
    seed_2 = _write(tmp_path / "s2.jsonl", {"a": [False], "b": [False], "c": [True]})
    run = read_run(f"pooled={seed_1},{seed_2}")
    assert dict(run.samples["toy"]) == {"a": [True, False], "b": [False, False], "c": [True]}
    other = read_run(f"other={_write(tmp_path / 'o.jsonl', {'a': [True], 'b': [True]})}")
    (difference,) = [r.difference for r in compare([run, other]) if r.difference is not None]
    assert difference.n == 2 and difference.mean == pytest.approx(((1 - 0.5) + (1 - 0)) / 2)


def test_cli_prints_a_table_writes_csv_and_reports_bad_lines(tmp_path, capsys):
    base = tmp_path / "base"
    base.mkdir()
    _write(base / "predictions.rank0.jsonl", BASE | {"f": [True, True]}, benchmark="math500")
    with open(base / "predictions.rank1.jsonl", "w") as handle:  # a run folder: every predictions file under it
        handle.write(json.dumps({"benchmark": "gsm8k", "id": "1", "correct": True}) + "\n{not json\n")
        handle.write(json.dumps({"benchmark": "gsm8k", "id": "2", "correct": "yes"}) + "\n")
    better = _write(tmp_path / "better.jsonl", BETTER, benchmark="math500")
    out = tmp_path / "table.csv"
    main(["compare", str(base), f"dft={better}", "--csv", str(out)])
    captured = capsys.readouterr()
    assert "| benchmark | base | dft | dft − base |" in captured.out
    assert "| math500 | 50.0 ± " in captured.out and "(6) |" in captured.out and "| +30.0 ± " in captured.out
    assert "skipped 1 line(s)" in captured.err and "not a prediction" in captured.err
    assert "correct not true/false" in captured.err
    rows = list(csv.DictReader(out.open()))
    assert [(r["benchmark"], r["run"]) for r in rows] == [("math500", "base"), ("math500", "dft"), ("gsm8k", "base")]
    assert float(rows[1]["diff"]) == pytest.approx(0.3) and rows[1]["paired_problems"] == "5"
    assert float(rows[0]["acc_ci95_low"]) < float(rows[0]["acc"]) < float(rows[0]["acc_ci95_high"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["no/such/file.jsonl"], "Predictions not found: no/such/file.jsonl"),
        (["x=."], "No predictions*.jsonl under ."),
        (["a=p.jsonl", "a=p.jsonl"], "Two runs share a label"),
    ],
)
def test_bad_runs_are_one_line(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "p.jsonl", BASE)
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"lit-dft: error: {message}") and "Traceback" not in err


def test_paths_with_equals_signs_other_benchmarks_and_single_problems(tmp_path, capsys):
    folder = tmp_path / "lr=1e-5"
    folder.mkdir()
    _write(folder / "predictions.jsonl", {"a": [True, False]}, benchmark="aime24")
    other = _write(tmp_path / "o.jsonl", {"a": [True, True], "b": [False]}, benchmark="aime24")
    extra = _write(tmp_path / "x.jsonl", {"z": [True]}, benchmark="amc23")
    main(["compare", str(folder), f"sft={folder}", f"two={other},{extra}", "--csv", str(tmp_path / "c.csv")])
    captured = capsys.readouterr()
    assert "| benchmark | lr=1e-5 | sft | two |" in captured.out
    assert "| aime24 | 50.0 ± n/a (1) |" in captured.out  # one problem: no spread to estimate
    assert "| amc23 |  |  | 100.0 ± n/a (1) |" in captured.out  # a benchmark only a later run answered
    assert "two answered 2 aime24 problems, 1 of them shared with lr=1e-5" in captured.err
    assert "two: pooled 2 files" in captured.err


def test_an_unwritable_csv_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["compare", _write(tmp_path / "p.jsonl", BASE), "--csv", str(tmp_path / "no" / "such" / "c.csv")])
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"lit-dft: error: Cannot write {tmp_path}")
