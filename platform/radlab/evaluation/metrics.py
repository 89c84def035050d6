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
from pathlib import Path
from typing import NamedTuple

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from radlab.config import EvalConfig
from radlab.data.synthetic import KINDS, parse_findings
from radlab.evaluation import ScorerError
from radlab.evaluation.chexbert import chexbert_labels, disagreements, f1_from_labels
from radlab.evaluation.chexprompt import bootstrap
from radlab.evaluation.f1_radgraph import radgraph_metrics, radgraph_rewards

_PHI = re.compile(r"_{2,}|X{3,}")


def normalise(text: str) -> str:
    return _PHI.sub("PHI", text)


class MetricResults(NamedTuple):
    """Every requested metric lands in `values` or `skipped` (with the reason), never silently
    dropped; `per_report` holds each pair's scores by column, in the order of the pairs."""
    values: dict[str, float]
    skipped: dict[str, str]
    per_report: dict[str, list[float]]


def rouge_l_scores(pairs: list[tuple[str, str]]) -> np.ndarray:
    """ROUGE-L F1 x100 of each pair."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array([scorer.score(normalise(r), normalise(c))["rougeL"].fmeasure * 100 for r, c in pairs])


def rouge_l(pairs: list[tuple[str, str]], resamples: int) -> dict[str, float]:
    return bootstrap(rouge_l_scores(pairs), resamples=resamples).metrics("text/rouge_l_f1")


def bleu(pairs: list[tuple[str, str]]) -> dict[str, float]:
    refs = [[normalise(r) for r, _ in pairs]]
    cands = [normalise(c) for _, c in pairs]
    return {"text/sacrebleu_bleu1": BLEU(max_ngram_order=1).corpus_score(cands, refs).score,
            "text/sacrebleu_bleu4": BLEU(max_ngram_order=4).corpus_score(cands, refs).score}


def bertscore(pairs: list[tuple[str, str]], model: Path, layers: int | None,
              resamples: int) -> tuple[dict[str, float], np.ndarray]:
    """BERTScore with a local encoder folder (nothing is downloaded): (mean P, R, F1 x100 with F1's
    interval, each pair's F1 x100)."""
    import bert_score
    from transformers import AutoConfig

    layers = layers or AutoConfig.from_pretrained(model).num_hidden_layers
    precision, recall, f1 = bert_score.score([normalise(c) for _, c in pairs], [normalise(r) for r, _ in pairs],
                                             model_type=str(model), num_layers=layers, batch_size=32)
    per_pair = f1.numpy() * 100
    return ({"text/bertscore_precision": float(precision.mean()) * 100, "text/bertscore_recall": float(recall.mean()) * 100,
             **bootstrap(per_pair, resamples=resamples).metrics("text/bertscore_f1")}, per_pair)


def label_f1(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Presence F1 of each synthetic finding kind (side, zone and severity ignored)."""
    truth = np.array([[any(f.kind == k for f in parse_findings(r).findings) for k in KINDS] for r, _ in pairs])
    guess = np.array([[any(f.kind == k for f in parse_findings(c).findings) for k in KINDS] for _, c in pairs])
    tp = (truth & guess).sum(0)
    fp = (~truth & guess).sum(0)
    fn = (truth & ~guess).sum(0)
    per_kind = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    out = {"clinical/label_f1_micro": float(micro) * 100, "clinical/label_f1_macro": float(per_kind.mean()) * 100}
    out.update({f"clinical/label_f1_{kind}": float(v) * 100 for kind, v in zip(KINDS, per_kind)})
    return out


def text_and_clinical(pairs: list[tuple[str, str]], cfg: EvalConfig, synthetic: bool) -> MetricResults:
    results = MetricResults({}, {}, {})
    values, skipped, per_report = results
    if not pairs:
        skipped.update({m: "no judged pairs" for m in cfg.metrics if m != "chexprompt"})
        return results
    if "rouge_l" in cfg.metrics:
        per_report["rouge_l_f1"] = rouge_l_scores(pairs).tolist()
        values.update(bootstrap(per_report["rouge_l_f1"], resamples=cfg.bootstrap).metrics("text/rouge_l_f1"))
    if "bleu" in cfg.metrics:
        values.update(bleu(pairs))
    if "bertscore" in cfg.metrics:
        model = cfg.bertscore_model
        if model is None or not model.is_dir():
            skipped["bertscore"] = (f"no encoder at eval.bertscore_model ({model})" if model else
                                    "set eval.bertscore_model to a local encoder folder (nothing is downloaded)")
        else:
            scores, per_pair = bertscore(pairs, model, cfg.bertscore_layers, cfg.bootstrap)
            values.update(scores)
            per_report["bertscore_f1"] = per_pair.tolist()
    if "label_f1" in cfg.metrics:
        if synthetic:
            values.update(label_f1(pairs))
        else:
            skipped["label_f1"] = "exact labels exist for the synthetic set only"
    if "chexbert_f1" in cfg.metrics:
        if cfg.chexbert_weights is None or cfg.chexbert_bert is None:
            skipped["chexbert_f1"] = ("set eval.chexbert_weights to the RRG_scorers chexbert.pth and "
                                      "eval.chexbert_bert to a local bert-base-uncased folder")
        else:
            try:  # the other metrics of this evaluation are kept
                reference, candidate = chexbert_labels(pairs, cfg.chexbert_weights, cfg.chexbert_bert)
                values.update(f1_from_labels(reference, candidate))
                per_report["chexbert_disagreements"] = disagreements(reference, candidate).tolist()
            except ScorerError as err:
                skipped["chexbert_f1"] = str(err)
    if "radgraph_f1" in cfg.metrics:
        if cfg.radgraph_python is None or cfg.radgraph_weights is None:
            skipped["radgraph_f1"] = ("set eval.radgraph_python to an interpreter with the radgraph package and "
                                      "eval.radgraph_weights to an extracted RRG_scorers RadGraph model")
        else:
            try:
                rewards = radgraph_rewards(pairs, cfg.radgraph_python, cfg.radgraph_weights, cfg.radgraph_model,
                                           cfg.radgraph_bert)
                values.update(radgraph_metrics(rewards, cfg.bootstrap))
                per_report["radgraph_f1"] = (rewards["partial"] * 100).tolist()
            except ScorerError as err:
                skipped["radgraph_f1"] = str(err)
    return results
