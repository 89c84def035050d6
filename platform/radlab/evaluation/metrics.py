"""Text and clinical metrics of generated findings against references.

Variants, as reported in their names: ROUGE-L F1 (rouge-score, stemming, x100), BLEU-1 and BLEU-4
(sacrebleu corpus BLEU, 0-100), BERTScore P/R/F1 (bert-score, x100, no baseline rescaling) with a
local encoder, F1-CheXbert (chexbert.py) and F1-RadGraph (f1_radgraph.py) with the user's scorer
weights, and on the synthetic set label F1 over its four findings (micro and macro), computed from
the grammar's exact labels. PHI placeholders (`___`, `XXXX`) are normalised to one token on both
sides for the lexical metrics only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from radlab.config import EvalConfig
from radlab.data.synthetic import KINDS, parse_findings
from radlab.evaluation import ScorerError
from radlab.evaluation.chexbert import (CHEXBERT_F1, chexbert_labels, disagreements, f1_statistics, label_codes,
                                       labels_of_codes)
from radlab.evaluation.chexprompt import ERROR_TYPES
from radlab.evaluation.f1_radgraph import radgraph_metrics, radgraph_rewards
from radlab.evaluation.resampling import Clusters, bootstrap
from radlab.metric_specs import METRIC_OF, METRICS, SCORES, Score

_PHI = re.compile(r"_{2,}|X{3,}")


def normalise(text: str) -> str:
    return _PHI.sub("PHI", text)


class MetricResults(NamedTuple):
    """Every requested metric lands in `values` or `skipped` (with the reason), never silently
    dropped; `per_report` holds each pair's scores by column, in the order of the pairs, and
    `labels` what a scorer read off each pair that a paired test needs (CheXbert's labels), by
    column (`labels/...`)."""
    values: dict[str, float]
    skipped: dict[str, str]
    per_report: dict[str, list[float]]
    labels: dict[str, list[str]]


def rouge_l_scores(pairs: list[tuple[str, str]]) -> np.ndarray:
    """ROUGE-L F1 x100 of each pair."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array([scorer.score(normalise(r), normalise(c))["rougeL"].fmeasure * 100 for r, c in pairs])


def rouge_l(pairs: list[tuple[str, str]], resamples: int, clusters: Clusters = None) -> dict[str, float]:
    return bootstrap(rouge_l_scores(pairs), resamples=resamples, clusters=clusters).metrics("text/rouge_l_f1")


BLEU_ORDERS = (1, 4)
CorpusScorer = Callable[[np.ndarray], float]  # a corpus-level score of summed per-report statistics


def bleu_statistics(pairs: list[tuple[str, str]], order: int) -> tuple[CorpusScorer, np.ndarray]:
    """(corpus BLEU-`order` of summed statistics, each (reference, candidate) pair's n-gram
    statistics): a resample's score sums the reports' statistics, extracted once, as sacrebleu's own
    significance tests do; scoring every resample from the texts would cost a corpus pass each
    (0.45 s for 2,000 reports)."""
    metric = BLEU(max_ngram_order=order)
    per_report = np.array(metric._extract_corpus_statistics([normalise(c) for _, c in pairs],
                                                            [[normalise(r) for r, _ in pairs]]))
    return (lambda summed: metric._compute_score_from_stats(summed.tolist()).score), per_report


def bleu(pairs: list[tuple[str, str]], resamples: int = 1000, clusters: Clusters = None) -> dict[str, float]:
    """Corpus BLEU-1 and BLEU-4 with 95% intervals, resampling reports by `clusters`."""
    out = {}
    for order in BLEU_ORDERS:
        corpus, per_report = bleu_statistics(pairs, order)
        out |= bootstrap(np.arange(len(pairs)), lambda rows, c=corpus, s=per_report: c(s[rows.astype(int)].sum(0)),
                         resamples, clusters=clusters).metrics(f"text/sacrebleu_bleu{order}")
    return out


def bertscore(pairs: list[tuple[str, str]], model: Path, layers: int | None,
              resamples: int, clusters: Clusters = None) -> tuple[dict[str, float], np.ndarray]:
    """BERTScore with a local encoder folder (nothing is downloaded): (mean P, R, F1 x100, each with
    its interval; each pair's F1 x100)."""
    import bert_score
    from transformers import AutoConfig

    layers = layers or AutoConfig.from_pretrained(model).num_hidden_layers
    precision, recall, f1 = bert_score.score([normalise(c) for _, c in pairs], [normalise(r) for r, _ in pairs],
                                             model_type=str(model), num_layers=layers, batch_size=32)
    per_pair = f1.numpy() * 100
    return ({**bootstrap(precision.numpy() * 100, resamples=resamples, clusters=clusters).metrics("text/bertscore_precision"),
             **bootstrap(recall.numpy() * 100, resamples=resamples, clusters=clusters).metrics("text/bertscore_recall"),
             **bootstrap(per_pair, resamples=resamples, clusters=clusters).metrics("text/bertscore_f1")}, per_pair)


def label_statistics(pairs: list[tuple[str, str]]) -> np.ndarray:
    """Each (reference, candidate) pair's true positives, false positives and false negatives of the
    presence of each synthetic finding kind (side, zone and severity ignored): (pairs, 3 x kinds)."""
    truth = np.array([[any(f.kind == k for f in parse_findings(r).findings) for k in KINDS] for r, _ in pairs],
                     dtype=bool).reshape(len(pairs), len(KINDS))
    guess = np.array([[any(f.kind == k for f in parse_findings(c).findings) for k in KINDS] for _, c in pairs],
                     dtype=bool).reshape(len(pairs), len(KINDS))
    return np.concatenate([truth & guess, ~truth & guess, truth & ~guess], axis=1).astype(float)


def _kind_f1(summed: np.ndarray) -> np.ndarray:
    """Each kind's F1 from summed label statistics (1 where a kind is neither reported nor present)."""
    tp, fp, fn = summed.reshape(3, len(KINDS))
    return np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0)


def _micro_f1(summed: np.ndarray) -> float:
    tp, fp, fn = summed.reshape(3, len(KINDS)).sum(1)
    return 100 * 2 * tp / max(2 * tp + fp + fn, 1)


# Label F1 as a function of summed label statistics, by the key each is logged under.
LABEL_F1: dict[str, CorpusScorer] = {
    "clinical/label_f1_micro": _micro_f1,
    "clinical/label_f1_macro": lambda summed: 100 * float(_kind_f1(summed).mean()),
    **{f"clinical/label_f1_{kind}": (lambda summed, k=k: 100 * float(_kind_f1(summed)[k]))
       for k, kind in enumerate(KINDS)},
}


class CorpusScore(NamedTuple):
    """A corpus-level score computed from per-report sufficient statistics, through which two
    systems are compared report by report: the fields of a report holding its reference side and
    its candidate side (texts, or labels read off them), the statistics of parallel lists of the two
    sides (reports x statistics), and the score of summed statistics."""
    reference: str
    candidate: str
    statistics: Callable[[list, list], np.ndarray]
    score: CorpusScorer


CHEXBERT_LABELS = ("labels/chexbert_reference", "labels/chexbert_candidate")


def corpus_score(key: str) -> CorpusScore | None:
    """The `CorpusScore` of a logged key (corpus BLEU, label F1, F1-CheXbert); None for any other."""
    found = re.fullmatch(r"text/sacrebleu_bleu(\d)", key)
    if found and int(found[1]) in BLEU_ORDERS:
        order = int(found[1])
        return CorpusScore("reference", "candidate",
                           lambda refs, cands: bleu_statistics(list(zip(refs, cands)), order)[1],
                           bleu_statistics([], order)[0])
    if key in LABEL_F1:
        return CorpusScore("reference", "candidate", lambda refs, cands: label_statistics(list(zip(refs, cands))),
                           LABEL_F1[key])
    if key in CHEXBERT_F1:
        return CorpusScore(*CHEXBERT_LABELS, lambda refs, cands: f1_statistics(labels_of_codes(refs),
                                                                               labels_of_codes(cands)),
                           CHEXBERT_F1[key])
    return None


def corpus_intervals(statistics: np.ndarray, scores: dict[str, CorpusScorer], resamples: int,
                     clusters: Clusters) -> dict[str, float]:
    """Each corpus-level score of `statistics` (reports x statistics) with its 95% interval,
    resampling reports by `clusters`: a resample sums its reports' statistics."""
    out = {}
    for key, corpus in scores.items():
        out |= bootstrap(np.arange(len(statistics)), lambda rows, c=corpus: c(statistics[rows.astype(int)].sum(0)),
                         resamples, clusters=clusters).metrics(key)
    return out


def label_f1(pairs: list[tuple[str, str]], resamples: int = 1000, clusters: Clusters = None) -> dict[str, float]:
    """Presence F1 of each synthetic finding kind; micro and macro with 95% intervals, resampling
    reports by `clusters`."""
    return corpus_intervals(label_statistics(pairs), LABEL_F1, resamples, clusters)


def score_rouge_l(pairs, cfg: EvalConfig, synthetic: bool, results: MetricResults, clusters: Clusters) -> None:
    results.per_report["rouge_l_f1"] = rouge_l_scores(pairs).tolist()
    results.values.update(bootstrap(results.per_report["rouge_l_f1"], resamples=cfg.bootstrap,
                                    clusters=clusters).metrics("text/rouge_l_f1"))


def score_bleu(pairs, cfg: EvalConfig, synthetic: bool, results: MetricResults, clusters: Clusters) -> None:
    results.values.update(bleu(pairs, cfg.bootstrap, clusters))


def score_bertscore(pairs, cfg: EvalConfig, synthetic: bool, results: MetricResults, clusters: Clusters) -> None:
    scores, per_pair = bertscore(pairs, cfg.bertscore_model, cfg.bertscore_layers, cfg.bootstrap, clusters)
    results.values.update(scores)
    results.per_report["bertscore_f1"] = per_pair.tolist()


def score_label_f1(pairs, cfg: EvalConfig, synthetic: bool, results: MetricResults, clusters: Clusters) -> None:
    results.values.update(label_f1(pairs, cfg.bootstrap, clusters))


def score_chexbert_f1(pairs, cfg: EvalConfig, synthetic: bool, results: MetricResults, clusters: Clusters) -> None:
    try:  # the other metrics of this evaluation are kept
        reference, candidate = chexbert_labels(pairs, cfg.chexbert_weights, cfg.chexbert_bert)
    except ScorerError as err:
        results.skipped["chexbert_f1"] = str(err)
        return
    results.values.update(corpus_intervals(f1_statistics(reference, candidate), CHEXBERT_F1, cfg.bootstrap, clusters))
    results.per_report["chexbert_disagreements"] = disagreements(reference, candidate).tolist()
    results.labels.update(zip(CHEXBERT_LABELS, (label_codes(reference), label_codes(candidate))))


def score_radgraph_f1(pairs, cfg: EvalConfig, synthetic: bool, results: MetricResults, clusters: Clusters) -> None:
    try:
        rewards = radgraph_rewards(pairs, cfg.radgraph_python, cfg.radgraph_weights, cfg.radgraph_model,
                                   cfg.radgraph_bert)
    except ScorerError as err:
        results.skipped["radgraph_f1"] = str(err)
        return
    results.values.update(radgraph_metrics(rewards, cfg.bootstrap, clusters))
    results.per_report["radgraph_f1"] = (rewards["partial"] * 100).tolist()


# (pairs, settings, on the synthetic set, where the results go, each pair's patient for the intervals)
Scorer = Callable[[list[tuple[str, str]], EvalConfig, bool, MetricResults, Clusters], None]
# Each registered metric's scorer, by the name its entry gives; a name without a function here
# stops radlab at import.
SCORERS: dict[str, Scorer] = {spec.name: globals()[spec.scorer] for spec in METRICS.values() if spec.scorer}


class ScorerFiles(NamedTuple):
    """The settings a scorer reads its files from: those it needs, those it reads when set, and
    what to set where a needed one is left out."""
    needed: tuple[str, ...]
    optional: tuple[str, ...]
    advice: str


SCORER_FILES: dict[str, ScorerFiles] = {
    "bertscore": ScorerFiles(("bertscore_model",), (), "set eval.bertscore_model to a local encoder folder (nothing "
                             "is downloaded)"),
    "chexbert_f1": ScorerFiles(("chexbert_weights", "chexbert_bert"), (), "set eval.chexbert_weights to the "
                               "RRG_scorers chexbert.pth and eval.chexbert_bert to a local bert-base-uncased folder"),
    "radgraph_f1": ScorerFiles(("radgraph_python", "radgraph_weights"), ("radgraph_bert",), "set eval.radgraph_python "
                               "to an interpreter with the radgraph package and eval.radgraph_weights to an "
                               "extracted RRG_scorers RadGraph model"),
}


FILE_KINDS = {"bertscore_model": "encoder folder", "chexbert_weights": "file", "chexbert_bert": "folder",
              "radgraph_python": "Python interpreter", "radgraph_weights": "folder", "radgraph_bert": "folder"}


def unavailable(name: str, cfg: EvalConfig, synthetic: bool) -> str | None:
    """Why metric `name` cannot be scored with these settings and data, known before any report is
    generated (a scorer may still fail on its files' contents, saying so); None where nothing is missing."""
    if name == "label_f1" and not synthetic:
        return "exact labels exist for the synthetic set only"
    if name not in SCORER_FILES:
        return None
    files = SCORER_FILES[name]
    if any(getattr(cfg, field) is None for field in files.needed):
        return files.advice
    paths = {field: getattr(cfg, field) for field in files.needed + files.optional if getattr(cfg, field) is not None}
    absent = [f"eval.{field}: no {FILE_KINDS[field]} at {path}" for field, path in paths.items()
              if not (path.is_dir() if FILE_KINDS[field].endswith("folder") else path.exists())]
    return "; ".join(absent) or None


def score_of(key: str) -> tuple[str, Score] | None:
    """(the metric that logs it, the registered score) of the key `key`, CheXprompt's per-type
    means included; None for a key no evaluation logs."""
    if key in SCORES:
        return METRIC_OF[key], SCORES[key]
    kind, _, error_type = key.removeprefix("chexprompt/").partition("/")
    if key.startswith("chexprompt/") and kind in ("significant", "insignificant") and error_type in ERROR_TYPES.values():
        return "chexprompt", Score(key, False)
    return None


def text_and_clinical(pairs: list[tuple[str, str]], cfg: EvalConfig, synthetic: bool,
                      clusters: Clusters = None) -> MetricResults:
    """Every requested metric but chexprompt, each by its registry entry; `clusters`: each pair's
    patient, which the intervals resample (see `resampling`)."""
    results = MetricResults({}, {}, {}, {})
    for name in cfg.metrics:
        if name not in SCORERS:
            continue
        reason = "no pairs to score" if not pairs else unavailable(name, cfg, synthetic)
        if reason:
            results.skipped[name] = reason
        else:
            SCORERS[name](pairs, cfg, synthetic, results, clusters)
    return results
