import numpy as np
import pytest

from radlab.evaluation.chexprompt import Counts, ParseError, Prompt, aggregate, format_answer, parse_answer
from radlab.evaluation.resampling import bootstrap

SIG = {"A": 1, "B": 0, "C": 2, "D": 0, "E": 0, "F": 1}
INSIG = {"A": 0, "B": 1, "C": 0, "D": 3, "E": 0, "F": 0}


@pytest.mark.parametrize("answer", [
    # the format line with square brackets, pairs in parentheses
    "[Clinically Significant Errors]: [(A, 1), (B, 0), (C, 2), (D, 0), (E, 0), (F, 1)]\n"
    "[Clinically Insignificant Errors]: [(A, 0), (B, 1), (C, 0), (D, 3), (E, 0), (F, 0)]",
    # published examples: parenthesised lists, an explanation first
    "Explanation: two misplaced findings.\nClinically significant errors: ((a, 1), (b, 0), (c, 2), (d, 0), (e, 0), (f, 1))\n"
    "Clinically insignificant errors: ((a, 0), (b, 1), (c, 0), (d, 3), (e, 0), (f, 0))\nThat is all.",
    # insignificant first, quoted letters, square-bracket pairs
    "insignificant: [['A', 0], ['B', 1], ['C', 0], ['D', 3], ['E', 0], ['F', 0]]\n"
    "significant: [['A', 1], ['B', 0], ['C', 2], ['D', 0], ['E', 0], ['F', 1]]",
    # two unlabelled lines: significant then insignificant
    "[(A, 1), (B, 0), (C, 2), (D, 0), (E, 0), (F, 1)]\n[(A, 0), (B, 1), (C, 0), (D, 3), (E, 0), (F, 0)]",
])
def test_parser_reads_every_answer_form(answer):
    counts = parse_answer(answer)
    assert counts.significant == SIG and counts.insignificant == INSIG


@pytest.mark.parametrize("answer", [
    "", "I cannot judge these reports.",
    "[Clinically Significant Errors]: [(A, 1), (B, 0), (C, 2)]\n[Clinically Insignificant Errors]: [(A, 0)]",
    "[Clinically Significant Errors]: [(B, 1), (A, 0), (C, 2), (D, 0), (E, 0), (F, 1)]\n"
    "[Clinically Insignificant Errors]: [(A, 0), (B, 1), (C, 0), (D, 3), (E, 0), (F, 0)]",
    "[Clinically Significant Errors]: [(A, 1), (B, 0), (C, 2), (D, 0), (E, 0), (F, 1)]",
])
def test_malformed_answers_raise(answer):
    with pytest.raises(ParseError):
        parse_answer(answer)


def test_format_and_parse_round_trip():
    counts = Counts(SIG, INSIG)
    assert parse_answer(format_answer(counts, "x")) == counts


def test_aggregate_on_known_counts_and_failures_are_not_zeros():
    zero = Counts(dict.fromkeys("ABCDEF", 0), dict.fromkeys("ABCDEF", 0))
    scores = aggregate([Counts(SIG, INSIG), zero, None], resamples=200)
    metrics = scores.metrics()
    assert metrics["chexprompt/n_reports"] == 3 and metrics["chexprompt/n_judged"] == 2
    assert metrics["chexprompt/n_failed"] == 1
    assert metrics["chexprompt/significant_mean"] == pytest.approx(2.0)      # (4 + 0) / 2
    assert metrics["chexprompt/insignificant_mean"] == pytest.approx(2.0)    # (4 + 0) / 2
    assert metrics["chexprompt/zero_significant_share"] == pytest.approx(0.5)
    assert metrics["chexprompt/significant/wrong_location"] == pytest.approx(1.0)
    assert metrics["chexprompt/significant_mean_ci_low"] <= 2.0 <= metrics["chexprompt/significant_mean_ci_high"]
    assert aggregate([None, None]).metrics()["chexprompt/n_judged"] == 0
    assert "chexprompt/significant_mean" not in aggregate([None]).metrics()


def test_bootstrap_interval():
    constant = bootstrap(np.full(50, 2.0), resamples=100)
    assert constant.low == constant.high == constant.mean == 2.0
    spread = bootstrap(np.arange(100.0), resamples=500)
    assert spread.low < 49.5 < spread.high and spread.high - spread.low < 25


def test_user_prompt_file_needs_both_placeholders(tmp_path):
    good = tmp_path / "p.txt"
    good.write_text("Compare {reference} with {candidate}.")
    prompt = Prompt.load(good)
    assert prompt.messages("R", "C") == [{"role": "user", "content": "Compare R with C."}]
    assert prompt.version.startswith("file-")
    bad = tmp_path / "q.txt"
    bad.write_text("Compare {reference}.")
    with pytest.raises(ValueError, match="q.txt: a prompt file must contain"):
        Prompt.load(bad)
