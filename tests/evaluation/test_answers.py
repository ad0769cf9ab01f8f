import os
import signal

import pytest
import torch

from lit_dft.evaluation import AnswerChecker, extract_answer, last_boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So the answer is $\\boxed{\\frac{14}{3}}$.", "\\frac{14}{3}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("nested \\boxed{\\dfrac{\\sqrt{3}}{2}} done", "\\dfrac{\\sqrt{3}}{2}"),
        ("first \\boxed{1} then corrected \\boxed{2}", "2"),  # the last box wins
        ("The angle is \\boxed{30^\\circ}.", "30^\\circ"),
        ("It is \\boxed{5\\text{ cm}}", "5\\text{ cm}"),
        ("old style \\fbox{42}", "42"),
        ("Natalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72", "72"),
        ("#### 1,000", "1000"),
        ("Therefore, the answer is 17.", "17"),
        ("The final answer is: $x = 3$", "x = 3"),
        ("I have no idea.", None),
        ("unclosed \\boxed{3", None),
        ("", None),
    ],
)
def test_extraction_on_real_cases(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_handles_deep_nesting():
    assert last_boxed("\\boxed{\\frac{a^{2}}{b_{1}}}") == "\\frac{a^{2}}{b_{1}}"


@pytest.fixture(scope="module")
def checker():
    checker = AnswerChecker(timeout_s=5.0)
    yield checker
    checker.close()


@pytest.mark.parametrize(
    "prediction, gold",
    [
        ("0.5", "\\frac12"),
        ("27", "27.0"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi/2)"),
        ("\\dfrac{3}{4}", "\\frac{3}{4}"),
        ("x^2+1", "1+x^2"),
        ("30^\\circ", "30"),
        ("5\\text{ cm}", "5"),
        ("\\sqrt{12}", "2\\sqrt{3}"),
    ],
)
def test_equivalences_that_must_hold(checker, prediction, gold):
    assert checker.check(prediction, [gold]).correct


@pytest.mark.parametrize(
    "prediction, gold",
    [("0.51", "\\frac12"), ("28", "27.0"), ("(3,\\pi)", "(3,\\pi/2)"), ("x^2-1", "x^2+1"), ("-5", "5")],
)
def test_equivalences_that_must_not_hold(checker, prediction, gold):
    verdict = checker.check(prediction, [gold])
    assert not verdict.correct and verdict.reason == "not equivalent"


def test_every_gold_part_must_match(checker):
    assert checker.check("2, 3", ["2", "3"]).correct
    assert not checker.check("2", ["2", "3"]).correct


def test_missing_answer_and_pathological_expression_count_as_incorrect_with_a_reason():
    checker = AnswerChecker(timeout_s=1.0)
    try:
        assert checker.check(None, ["1"]).reason == "no answer found"
        assert checker.check("1", []).reason == "no gold answer"
        assert checker.check("9^{9^{9^{9^{9}}}}", ["1"]).reason == "timeout"
        assert checker.check("2", ["2.0"]).correct, "a fresh worker replaces the killed one"
    finally:
        checker.close()


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu: forked", "cuda initialised: fork server"])
def test_the_worker_is_forked_only_while_no_cuda_context_exists(monkeypatch, cuda):
    """Forking a process that has initialised CUDA is unsafe: then the worker comes from the fork server, with the
    same verdicts, timeouts and signal handling."""
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: cuda)
    checker = AnswerChecker(timeout_s=1.0)
    try:
        for attempt in ("first worker", "the one replacing it after a timeout"):
            worker = checker._worker()
            assert (worker.apply(os.getppid) == os.getpid()) is not cuda, attempt  # the server forks the worker
            assert worker.apply(signal.getsignal, (signal.SIGTERM,)) == signal.SIG_DFL
            assert worker.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN
            assert checker.check("x^2+1", ["1+x^2"]).correct  # decided by math-verify, in the worker
            assert checker.check("x^2-1", ["x^2+1"]).reason == "not equivalent"
            assert checker.check("9^{9^{9^{9^{9}}}}", ["1"]).reason == "timeout"
            assert checker._pool is None, "the stuck worker is killed"
    finally:
        checker.close()


def test_answer_formats_are_one_registry_that_presets_use(tmp_path):
    from lit_dft.data.presets import Preset, gold_answers
    from lit_dft.errors import LitDFTError
    from lit_dft.evaluation import ANSWER_READERS, register_answer_reader
    from lit_dft.evaluation.answers import gsm8k_to_boxed

    row = {"question": "q", "solution": "s", "answer": "Final: 42 (units)"}
    register_answer_reader("after_colon", lambda text: text.split(":", 1)[1].strip())
    try:
        assert gold_answers(Preset(answer_format="after_colon"), row) == ["42"]
    finally:
        del ANSWER_READERS["after_colon"]
    with pytest.raises(LitDFTError, match="Unknown answer_format 'after_colon'. Known: answer_is, boxed, gsm8k"):
        Preset(answer_format="after_colon")
    assert gold_answers(Preset(answer_format="answer_is"), {"answer": "So 3+4=7.\nThe answer is: 7"}) == ["7"]
    assert gsm8k_to_boxed("3 + 4 = 7\n#### 7") == "3 + 4 = 7\nThe final answer is $\\boxed{7}$."
    assert extract_answer(gsm8k_to_boxed("a\n#### 1,000")) == "1,000" and gsm8k_to_boxed("no marker") == "no marker"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So 3+4=7.\nThe answer is: 7", "7"),
        ("The answer is: \\$5", "\\$5"),
        ("The answer is: $3$ or $5$", "$3$ or $5$"),
        ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("The answer is: 5.", "5"),
        ("The answer is:", None),
        ("The answer is: .", None),
        ("the answer is 2\nthen the final answer is 3", "3"),
    ],
)
def test_answer_is_reads_the_rest_of_the_line(text, expected):
    from lit_dft.evaluation.answers import answer_is

    assert answer_is(text) == expected


def test_gsm8k_to_boxed_leaves_a_marker_before_other_lines_alone():
    from lit_dft.evaluation.answers import gsm8k_to_boxed

    assert gsm8k_to_boxed("a\n#### 18\nextra") == "a\n#### 18\nextra"
