"""How far one text source moved from another: the quality report of LLM-structured findings
against the rule-extracted ones (ROUGE-L, BLEU, and CheXprompt with the rule text as reference),
so a user sees what structuring changed before training on it. A pair per image: the images of one
study share their report, so the intervals draw patients, not pairs (`resampling`)."""

from __future__ import annotations

from radlab.config import JudgeConfig
from radlab.evaluation.chexprompt import aggregate
from radlab.evaluation.judge_client import JudgeClient
from radlab.evaluation.metrics import bleu, rouge_l
from radlab.evaluation.resampling import Clusters


def compare_texts(pairs: list[tuple[str, str]], judge: JudgeConfig | None = None, resamples: int = 200,
                  clusters: Clusters = None) -> dict[str, float]:
    """Metrics of (reference, candidate) pairs; with a judge, the CheXprompt counts too.
    `clusters`: each pair's patient, which the intervals resample together."""
    if not pairs:
        return {}
    metrics = rouge_l(pairs, resamples, clusters) | bleu(pairs, resamples, clusters)
    if judge is not None:
        judgments = JudgeClient(judge).judge(pairs)
        metrics |= aggregate([j.counts for j in judgments], resamples, clusters=clusters).metrics()
    return metrics
