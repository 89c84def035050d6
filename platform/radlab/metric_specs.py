"""The metric registry: one entry per metric of `eval.metrics`. Adding a metric is adding its entry
here and writing the scorer the entry names in `radlab.evaluation.metrics`; the config's choices,
the summary table, the sweep objectives and the paired tests all read this."""

from __future__ import annotations

from typing import NamedTuple


class Score(NamedTuple):
    """One number an evaluation logs: its key, its direction, and the per-report score a paired
    test compares two systems on (None: a corpus-level number, whose interval resamples reports;
    corpus BLEU and label F1 are compared through each report's statistics, see
    `radlab.evaluation.metrics.corpus_statistics`)."""
    key: str
    higher_is_better: bool
    per_report: str | None = None


class MetricSpec(NamedTuple):
    """A metric: what it needs, the scores it logs, and the scorer in radlab.evaluation.metrics
    (None for chexprompt, which the judge scores)."""
    name: str
    needs: str
    scores: tuple[Score, ...]
    scorer: str | None


METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in (
    MetricSpec("chexprompt", "a judge endpoint (eval.judge)", (
        Score("chexprompt/significant_mean", False, "chexprompt/significant"),
        Score("chexprompt/insignificant_mean", False, "chexprompt/insignificant"),
        Score("chexprompt/total_mean", False, "chexprompt/total"),
        Score("chexprompt/zero_significant_share", True, "chexprompt/zero_significant"),
        Score("chexprompt/n_failed", False)), None),
    MetricSpec("rouge_l", "nothing", (Score("text/rouge_l_f1", True, "rouge_l_f1"),), "score_rouge_l"),
    MetricSpec("bleu", "nothing", (Score("text/sacrebleu_bleu4", True), Score("text/sacrebleu_bleu1", True)),
               "score_bleu"),
    MetricSpec("bertscore", "eval.bertscore_model", (Score("text/bertscore_f1", True, "bertscore_f1"),),
               "score_bertscore"),
    MetricSpec("label_f1", "the synthetic set", (Score("clinical/label_f1_micro", True),
                                                 Score("clinical/label_f1_macro", True)), "score_label_f1"),
    MetricSpec("chexbert_f1", "eval.chexbert_weights and eval.chexbert_bert", (
        Score("clinical/chexbert_f1_micro_14", True), Score("clinical/chexbert_f1_micro_5", True)),
        "score_chexbert_f1"),
    MetricSpec("radgraph_f1", "eval.radgraph_python and eval.radgraph_weights",
               (Score("clinical/radgraph_f1", True, "radgraph_f1"),), "score_radgraph_f1"),
)}
SCORES: dict[str, Score] = {score.key: score for spec in METRICS.values() for score in spec.scores}
METRIC_OF: dict[str, str] = {score.key: spec.name for spec in METRICS.values() for score in spec.scores}

# The grounding checks (`eval.grounding`): numbers about the model's use of the image, shown and
# logged beside the metrics (lower is better for all but flip consistency).
GROUNDING: dict[str, Score] = {score.key: score for score in (
    Score("grounding/flip_consistency", True),
    Score("grounding/blank_image_rouge_l", False),
    Score("grounding/blank_image_identical_share", False),
    *(Score(f"grounding/attribute_errors/{attribute}", False) for attribute in ("finding", "side", "zone", "severity")),
)}
