"""Grounding checks: does the model read the image it is given?

- flip consistency: findings are generated again on horizontally mirrored images; of the
  generated sentences that name one side, the share whose mirrored generation holds the same
  sentence with the other side. A model that reads the side off the image scores near 1; one
  that guesses the side scores near the share its guesses happen to match.
- image reliance: findings are generated on a blank (uniform grey) image; the mean ROUGE-L
  between each blank-image generation and the real one, and the share that are identical. A
  model that writes the same report without the image scores near 100 and 1.
- on the synthetic set, errors per attribute of each reference finding (the finding missed, its
  side, zone or severity wrong), read by the set's own grammar.

Sentences are compared as written, so on free text the flip consistency is a lower bound: a
mirrored generation that words a finding differently does not count as flipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps

from radlab.config import Experiment
from radlab.data.synthetic import parse_findings
from radlab.evaluation.generate import generate_findings
from radlab.evaluation.metrics import rouge_l_scores
from radlab.evaluation.resampling import bootstrap, patients
from radlab.formats.images import ImageTransform

SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)
OTHER_SIDE = {"left": "right", "right": "left"}
ATTRIBUTES = ("finding", "side", "zone", "severity")


def blank(image: Image.Image) -> Image.Image:
    return Image.new(image.mode, image.size, 128 if image.mode in ("L", "RGB") else 0)


def lateral_sentences(text: str) -> list[tuple[str, str]]:
    """(sentence with its side word replaced by <side>, side) for each sentence naming exactly one side."""
    found = []
    for sentence in re.findall(r"[^.]+\.?", text):
        sides = {m.lower() for m in SIDE.findall(sentence)}
        if len(sides) == 1:
            found.append((SIDE.sub("<side>", sentence.strip().lower()), sides.pop()))
    return found


def flip_scores(originals: list[str], mirrored: list[str]) -> list[list[float]]:
    """Per report, per lateral sentence of its original: 1 if the mirrored generation states it on the other side."""
    scores = []
    for original, flipped in zip(originals, mirrored):
        other = set(lateral_sentences(flipped))
        scores.append([float((key, OTHER_SIDE[side]) in other) for key, side in lateral_sentences(original)])
    return scores


def attribute_misses(references: list[str], candidates: list[str]) -> tuple[dict[str, np.ndarray], list[int]]:
    """For each reference finding (synthetic grammar), whether each attribute is wrong in the
    candidate (1 or 0): `finding` (no candidate finding of that kind), then, for the found ones,
    `side`, `zone`, `severity`; and the index of the report each finding is in."""
    misses: dict[str, list[float]] = {a: [] for a in ATTRIBUTES}
    report_of: list[int] = []
    for k, (reference, candidate) in enumerate(zip(references, candidates)):
        said = {f.kind: f for f in parse_findings(candidate).findings}
        for finding in parse_findings(reference).findings:
            report_of.append(k)
            match = said.get(finding.kind)
            misses["finding"].append(float(match is None))
            for attribute in ATTRIBUTES[1:]:
                misses[attribute].append(float(match is not None and getattr(match, attribute) != getattr(finding, attribute)))
    return {a: np.array(v) for a, v in misses.items()}, report_of


def grounding_checks(model, tokenizer, template: str, experiment: Experiment, transform: ImageTransform,
                     predictions: list[dict], progress: Callable[[int], None] | None = None
                     ) -> tuple[dict[str, float], dict[str, list]]:
    """(the grounding metrics with 95% intervals, a per-report table) for `predictions`, the
    model's generations on the evaluation split (its prompts in `template`, its images by `transform`)."""
    cfg = experiment.eval
    kept = [p for p in predictions if "candidate" in p]
    generated = {}
    for name, alter in (("mirrored", ImageOps.mirror), ("blank", blank)):
        runs = generate_findings(model, tokenizer, experiment, transform, cfg.split, cfg.limit, progress=progress,
                                 alter=alter, template=template)
        generated[name] = {r["id"]: r.get("candidate", "") for r in runs}
    originals = [p["candidate"] for p in kept]
    mirrored = [generated["mirrored"][p["id"]] for p in kept]
    blanks = [generated["blank"][p["id"]] for p in kept]
    metrics: dict[str, float] = {}
    # The sentences of one report, and the reports of one patient, are resampled together.
    patient = patients(kept)
    per_report = flip_scores(originals, mirrored)
    flips = [score for scores in per_report for score in scores]
    if flips:
        metrics |= bootstrap(flips, resamples=cfg.bootstrap, clusters=[
            patient[k] for k, scores in enumerate(per_report) for _ in scores]).metrics("grounding/flip_consistency")
        metrics["grounding/n_lateral_sentences"] = float(len(flips))
    if kept:
        # An identical report is 100 even where ROUGE has no words to compare (punctuation only).
        similarity = [100.0 if o.strip() == b.strip() else score
                      for o, b, score in zip(originals, blanks, rouge_l_scores(list(zip(originals, blanks))))]
        metrics |= bootstrap(similarity, resamples=cfg.bootstrap, clusters=patient).metrics("grounding/blank_image_rouge_l")
        metrics |= bootstrap([float(o == b) for o, b in zip(originals, blanks)], resamples=cfg.bootstrap,
                             clusters=patient).metrics("grounding/blank_image_identical_share")
    if experiment.data.synthetic is not None:
        # The findings of one report, and the reports of one patient, are resampled together.
        misses, report_of = attribute_misses([p["reference"] for p in kept], originals)
        for attribute, missed in misses.items() if report_of else ():
            metrics |= bootstrap(missed, resamples=cfg.bootstrap, clusters=[patient[k] for k in report_of]).metrics(
                f"grounding/attribute_errors/{attribute}")
    table = {"id": [p["id"] for p in kept], "generated": originals, "mirrored_image": mirrored,
             "blank_image": blanks}
    return metrics, table
