"""Text and clinical metrics of generated findings against references.

Variants, as reported in their names: ROUGE-L F1 (rouge-score, stemming, x100), BLEU-1 and BLEU-4
(sacrebleu corpus BLEU, 0-100), BERTScore P/R/F1 (bert-score, x100, no baseline rescaling) with a
local encoder, F1-CheXbert (chexbert.py) and F1-RadGraph (f1_radgraph.py) with the user's scorer
weights, and on the synthetic set label F1 over its four findings (micro and macro), computed from
the grammar's exact labels. PHI placeholders (`___`, `XXXX`) are normalised to one token on both sides for the lexical metrics only.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from radlab.config import EvalConfig
from radlab.data.synthetic import KINDS, parse_findings
from radlab.evaluation import ScorerError
from radlab.evaluation.chexbert import chexbert_f1
from radlab.evaluation.chexprompt import bootstrap
from radlab.evaluation.f1_radgraph import radgraph_f1

_PHI = re.compile(r"_{2,}|X{3,}")


def normalise(text: str) -> str:
    return _PHI.sub("PHI", text)


def rouge_l(pairs: list[tuple[str, str]], resamples: int) -> dict[str, float]:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    values = np.array([scorer.score(normalise(r), normalise(c))["rougeL"].fmeasure * 100 for r, c in pairs])
    interval = bootstrap(values, resamples=resamples)
    return {"text/rouge_l_f1": interval.mean, "text/rouge_l_f1_ci_low": interval.low,
            "text/rouge_l_f1_ci_high": interval.high}


def bleu(pairs: list[tuple[str, str]]) -> dict[str, float]:
    refs = [[normalise(r) for r, _ in pairs]]
    cands = [normalise(c) for _, c in pairs]
    return {"text/sacrebleu_bleu1": BLEU(max_ngram_order=1).corpus_score(cands, refs).score,
            "text/sacrebleu_bleu4": BLEU(max_ngram_order=4).corpus_score(cands, refs).score}


def bertscore(pairs: list[tuple[str, str]], model: Path, layers: int | None, resamples: int) -> dict[str, float]:
    """BERTScore with a local encoder folder (nothing is downloaded): mean P, R, F1 x100, F1 with its
    interval."""
    import bert_score
    from transformers import AutoConfig

    layers = layers or AutoConfig.from_pretrained(model).num_hidden_layers
    precision, recall, f1 = bert_score.score([normalise(c) for _, c in pairs], [normalise(r) for r, _ in pairs],
                                             model_type=str(model), num_layers=layers, batch_size=32)
    interval = bootstrap(f1.numpy() * 100, resamples=resamples)
    return {"text/bertscore_precision": float(precision.mean()) * 100, "text/bertscore_recall": float(recall.mean()) * 100,
            "text/bertscore_f1": interval.mean, "text/bertscore_f1_ci_low": interval.low,
            "text/bertscore_f1_ci_high": interval.high}


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


def text_and_clinical(pairs: list[tuple[str, str]], cfg: EvalConfig,
                      synthetic: bool) -> tuple[dict[str, float], dict[str, str]]:
    """(values, skipped): every requested metric lands in one of the two, never silently dropped."""
    values: dict[str, float] = {}
    skipped: dict[str, str] = {}
    if not pairs:
        return values, {m: "no judged pairs" for m in cfg.metrics if m != "chexprompt"}
    if "rouge_l" in cfg.metrics:
        values.update(rouge_l(pairs, cfg.bootstrap))
    if "bleu" in cfg.metrics:
        values.update(bleu(pairs))
    if "bertscore" in cfg.metrics:
        model = cfg.bertscore_model
        if model is None or not model.is_dir():
            skipped["bertscore"] = (f"no encoder at eval.bertscore_model ({model})" if model else
                                    "set eval.bertscore_model to a local encoder folder (nothing is downloaded)")
        else:
            values.update(bertscore(pairs, model, cfg.bertscore_layers, cfg.bootstrap))
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
            try:
                values.update(chexbert_f1(pairs, cfg.chexbert_weights, cfg.chexbert_bert))
            except ScorerError as err:  # the other metrics of this evaluation are kept
                skipped["chexbert_f1"] = str(err)
    if "radgraph_f1" in cfg.metrics:
        if cfg.radgraph_python is None or cfg.radgraph_weights is None:
            skipped["radgraph_f1"] = ("set eval.radgraph_python to an interpreter with the radgraph package and "
                                      "eval.radgraph_weights to an extracted RRG_scorers RadGraph model")
        else:
            try:
                values.update(radgraph_f1(pairs, cfg.radgraph_python, cfg.radgraph_weights, cfg.radgraph_model,
                                          cfg.radgraph_bert, cfg.bootstrap))
            except ScorerError as err:
                skipped["radgraph_f1"] = str(err)
    return values, skipped
