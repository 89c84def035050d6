"""CheXprompt: an LLM judge counts six kinds of error in a candidate findings text against the
reference, each as clinically significant or insignificant. This module holds our prompt (written
from the published description), the parser of the judge's answer, and the aggregate scores with
bootstrap intervals. The HTTP side lives in `judge_client`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radlab.evaluation.resampling import Clusters, Interval, bootstrap
from radlab.llm import AnswerUnusable

ERROR_TYPES = {
    "A": "false_finding",          # a finding the reference does not have
    "B": "omitted_finding",        # a finding of the reference left out
    "C": "wrong_location",         # wrong location or position of a finding
    "D": "wrong_severity",         # wrong severity of a finding
    "E": "false_comparison",       # a comparison the reference does not make
    "F": "omitted_comparison",     # a comparison describing change left out
}
LETTERS = tuple(ERROR_TYPES)
PROMPT_VERSION = "radlab-chexprompt-1"

SYSTEM_PROMPT = """You are an expert radiologist. You compare a candidate chest X-ray findings section \
with a reference findings section written for the same study, and count the errors in the candidate.

Error types:
(A) a false prediction of a finding (the candidate reports a finding the reference does not);
(B) omission of a finding that the reference reports;
(C) incorrect location or position of a finding;
(D) incorrect severity of a finding;
(E) mention of a comparison with a prior study that the reference does not make;
(F) omission of a comparison that the reference makes to describe a change.

Count each error as clinically significant when it would likely change the patient's treatment, \
management or outcome, and as clinically insignificant otherwise. Paraphrases that mean the same \
thing are not errors.

Answer with a one-line explanation, then exactly these two lines, each a list of six (letter, count) \
pairs in the order A to F:
[Clinically Significant Errors]: [(A, count), (B, count), (C, count), (D, count), (E, count), (F, count)]
[Clinically Insignificant Errors]: [(A, count), (B, count), (C, count), (D, count), (E, count), (F, count)]"""

FEW_SHOT_ANSWER = """Explanation: the candidate misses the effusion and puts the consolidation on the wrong side; \
the pneumothorax size differs slightly.
[Clinically Significant Errors]: [(A, 0), (B, 1), (C, 1), (D, 0), (E, 0), (F, 0)]
[Clinically Insignificant Errors]: [(A, 0), (B, 0), (C, 0), (D, 1), (E, 0), (F, 0)]"""


def user_message(reference: str, candidate: str, template: str | None = None) -> str:
    """The user turn: both texts inside tags. A user template uses {reference} and {candidate}."""
    if template is not None:
        return template.format(reference=reference, candidate=candidate)
    return (f"Reference findings:\n<reference>\n{reference}\n</reference>\n\n"
            f"Candidate findings:\n<candidate>\n{candidate}\n</candidate>")


FEW_SHOT_USER = user_message(
    "Right lower lobe consolidation. Small left pleural effusion. Small right apical pneumothorax.",
    "Left lower lobe consolidation. Moderate right apical pneumothorax. No pleural effusion.",
)


@dataclass(frozen=True)
class Prompt:
    """The messages sent for one pair, and the version that keys the cache."""
    system: str
    template: str | None
    version: str

    @classmethod
    def load(cls, prompt_file: Path | None) -> Prompt:
        if prompt_file is None:
            return cls(SYSTEM_PROMPT, None, PROMPT_VERSION)
        text = Path(prompt_file).read_text()
        if "{reference}" not in text or "{candidate}" not in text:
            raise ValueError(f"{prompt_file}: a prompt file must contain {{reference}} and {{candidate}}")
        return cls("", text, "file-" + hashlib.sha256(text.encode()).hexdigest()[:12])

    def messages(self, reference: str, candidate: str) -> list[dict]:
        if self.template is not None:
            return [{"role": "user", "content": user_message(reference, candidate, self.template)}]
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": FEW_SHOT_USER},
            {"role": "assistant", "content": FEW_SHOT_ANSWER},
            {"role": "user", "content": user_message(reference, candidate)},
        ]


class ParseError(AnswerUnusable):
    """A judge answer that does not hold the two lists of six (letter, count) pairs."""


@dataclass
class Counts:
    """One judgment: the errors of each of the six kinds (letters A-F), clinically significant and not."""
    significant: dict[str, int]
    insignificant: dict[str, int]


_PAIR = re.compile(r"[\(\[]\s*['\"]?([A-Fa-f])['\"]?\s*[,:]\s*(\d+)\s*[\)\]]")


def _pairs(line: str) -> dict[str, int] | None:
    found = _PAIR.findall(line)
    if [letter.upper() for letter, _ in found] != list(LETTERS):
        return None
    return {letter.upper(): int(count) for letter, count in found}


def parse_answer(text: str) -> Counts:
    """Read the significant and insignificant lists from a judge's answer.

    Accepted: pairs in parentheses or brackets, inside a bracketed or parenthesised list, on lines
    labelled "significant" / "insignificant" (in any case, with or without brackets), or else the
    first two lines that hold six pairs each; explanations around them are ignored.
    """
    if not isinstance(text, str) or not text.strip():
        raise ParseError("empty answer")
    significant = insignificant = None
    unlabelled = []
    for line in text.splitlines():
        pairs = _pairs(line)
        if pairs is None:
            continue
        lower = line.lower()
        if "insignificant" in lower and insignificant is None:
            insignificant = pairs
        elif "significant" in lower and significant is None:
            significant = pairs
        else:
            unlabelled.append(pairs)
    if significant is None and insignificant is None and len(unlabelled) >= 2:
        significant, insignificant = unlabelled[:2]
    if significant is None or insignificant is None:
        raise ParseError(f"no significant and insignificant lists of six (letter, count) pairs in: {text[:200]!r}")
    return Counts(significant, insignificant)


def format_answer(counts: Counts, explanation: str) -> str:
    def line(values: dict[str, int]) -> str:
        return "[" + ", ".join(f"({letter}, {values[letter]})" for letter in LETTERS) + "]"

    return (f"Explanation: {explanation}\n[Clinically Significant Errors]: {line(counts.significant)}\n"
            f"[Clinically Insignificant Errors]: {line(counts.insignificant)}")


@dataclass
class Scores:
    """The aggregate CheXprompt scores of one system, ready for MLflow."""
    n_reports: int
    n_judged: int
    n_failed: int
    intervals: dict[str, Interval] = field(default_factory=dict)

    def metrics(self, prefix: str = "chexprompt/") -> dict[str, float]:
        out = {f"{prefix}n_reports": float(self.n_reports), f"{prefix}n_judged": float(self.n_judged),
               f"{prefix}n_failed": float(self.n_failed)}
        for name, interval in self.intervals.items():
            out.update(interval.metrics(f"{prefix}{name}"))
        return out


def aggregate(counts: list[Counts | None], resamples: int = 1000, seed: int = 0, clusters: Clusters = None) -> Scores:
    """Scores over judged reports; None entries are failed judgments, counted but never scored.
    `clusters`: each report's patient, which the intervals resample (see `resampling`)."""
    judged = [c for c in counts if c is not None]
    if clusters is not None:
        clusters = [cluster for cluster, c in zip(clusters, counts) if c is not None]
    scores = Scores(len(counts), len(judged), len(counts) - len(judged))
    if not judged:
        return scores
    sig = np.array([[c.significant[x] for x in LETTERS] for c in judged])
    insig = np.array([[c.insignificant[x] for x in LETTERS] for c in judged])
    columns = {"significant_mean": sig.sum(1), "insignificant_mean": insig.sum(1),
               "total_mean": sig.sum(1) + insig.sum(1),
               "zero_significant_share": (sig.sum(1) == 0).astype(float)}
    for i, letter in enumerate(LETTERS):
        columns[f"significant/{ERROR_TYPES[letter]}"] = sig[:, i]
        columns[f"insignificant/{ERROR_TYPES[letter]}"] = insig[:, i]
    scores.intervals = {name: bootstrap(values, resamples=resamples, seed=seed, clusters=clusters)
                        for name, values in columns.items()}
    return scores
