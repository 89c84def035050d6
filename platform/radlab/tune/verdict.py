"""What a sweep concludes: each configuration against the baseline configuration (every axis at its
first value), with an interval and a paired test on the objective's per-report score.

A trial is one configuration trained with one training seed. The seed alone can move a run more
than a configuration does, so one run per side compares two trained models, not two
configurations, and the verdict says so. With a `seed` axis the runs of a configuration are pooled:
`versus_over_seeds` resamples seeds and patients for the interval and tests the seed-averaged scores
(`versus_corpus` likewise for corpus BLEU, label F1 and F1-CheXbert, through each report's
sufficient statistics),
and the best configuration is the one with the best mean over its seeds. Every configuration is
tested against the same baseline, so the more there are, the likelier one of them beats it by
chance: a configuration beats the baseline only where its p-value, adjusted by Holm's method over
all the configurations tested, stays under 0.05, and the intervals are Bonferroni's (each at
1 - 0.05/m for m configurations), so that all of them hold together with 95% confidence and an
interval that clears zero says what the adjusted p-value says.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field

from radlab.evaluation.compare import (LEVEL, patients_from_table, reports_from_table, scores_from_table, versus,
                                      versus_corpus, versus_over_seeds)
from radlab.evaluation.metrics import CorpusScore, corpus_score, score_of
from radlab.tracking.runs import Tracker

SEED_AXIS = "seed"
TESTED = ("difference", "ci_low", "ci_high", "confidence", "p_value", "p_adjusted", "significant")


@dataclass
class Configuration:
    name: str
    settings: dict  # the axes but the seed, and the searched parameters
    runs: dict[int, dict] = field(default_factory=dict)  # training seed -> its trial's row
    vs_baseline: dict = field(default_factory=dict)

    def mean(self, metric: str) -> float:
        return statistics.fmean(row[metric] for row in self.runs.values())

    def best_run(self, metric: str, mode: str) -> dict:
        pick = min if mode == "min" else max
        return pick(self.runs.values(), key=lambda row: row[metric])

    def row(self, metric: str) -> dict:
        values = [row[metric] for row in self.runs.values()]
        return {"configuration": self.name, "seeds": sorted(self.runs), metric: self.mean(metric),
                f"{metric}_min": min(values), f"{metric}_max": max(values),
                **{f"vs_baseline_{k}": v for k, v in self.vs_baseline.items() if k in TESTED}}


def setting_name(settings: dict) -> str:
    """A cell's name: each overridden field's last part and its value ("base" for none)."""
    return "_".join(f"{path.split('.')[-1]}={value}" for path, value in settings.items()).replace(" ", "") or "base"


def configurations(rows: list[dict], axes: list[str], default_seed: int) -> list[Configuration]:
    """The finished trials grouped by configuration, in the order they first appear; a trial's seed
    is its `seed` axis value, else the experiment's."""
    found: dict[str, Configuration] = {}
    for row in rows:
        settings = {path: row[path] for path in axes if path != SEED_AXIS} | {
            key: value for key, value in row.items() if key.startswith("search.")}
        key = json.dumps(settings, sort_keys=True, default=str)
        configuration = found.setdefault(key, Configuration(setting_name(settings), settings))
        configuration.runs[int(row.get(SEED_AXIS, default_seed))] = row
    return list(found.values())


def versus_baseline(tracker: Tracker, configs: list[Configuration], baseline: dict, metric: str,
                    resamples: int) -> Configuration | None:
    """Test every configuration against the baseline one (the first whose axes are `baseline`):
    sets each one's `vs_baseline` (the verdict, and difference, interval, p-value, the p-value
    adjusted over the configurations tested, significant) and returns the baseline configuration
    (None when none of its trials finished)."""
    base = next((c for c in configs if all(c.settings.get(k) == v for k, v in baseline.items())), None)
    base_name = base.name if base else setting_name(baseline)
    score = score_of(metric)[1]

    corpus = corpus_score(metric)  # tested through each report's sufficient statistics
    patients_of: dict[str, str] = {}  # id -> patient, from the tables that name them

    def scores(config: Configuration) -> dict[int, dict] | None:
        """Each seed's per-report scores (for a corpus-level score, its reports' texts or labels), or
        None where a run logged none."""
        found = {seed: tracker.read_table(row["run_id"], "eval/trained/per_report.json")
                 for seed, row in config.runs.items()}
        if any(t is None for t in found.values()):
            return None
        for table in found.values():
            patients_of.update(patients_from_table(table) or {})
        read = {s: reports_from_table(t, corpus) if corpus else scores_from_table(t) for s, t in found.items()}
        return None if any(r is None for r in read.values()) else read

    testable = score.per_report is not None or corpus is not None
    base_scores = scores(base) if base is not None and testable else None
    # Bonferroni's level for the intervals: 95% for all the configurations tested against the baseline together.
    confidence = 1 - LEVEL / max(1, sum(c is not base for c in configs))
    tested_configs = []
    for config in configs:
        if config is base:
            config.vs_baseline = {"verdict": f"{base_name} is the baseline"}
        elif base is None:
            config.vs_baseline = {"verdict": f"no result of the baseline {base_name} to test against"}
        elif not testable:
            config.vs_baseline = {"verdict": f"{metric} is corpus-level: no paired test against {base_name}"}
        elif base_scores is None or (mine := scores(config)) is None:
            config.vs_baseline = {"verdict": f"no {_logged(corpus)} logged to test against {base_name}"}
        else:
            config.vs_baseline = (
                versus_corpus(mine, base_scores, metric, resamples, patients_of=patients_of or None,
                              confidence=confidence) if corpus else
                versus_over_seeds(mine, base_scores, score.per_report, score.higher_is_better, resamples,
                                  patients_of=patients_of or None, confidence=confidence)) | {"confidence": confidence}
            tested_configs.append(config)
    tested = [c for c in tested_configs if not math.isnan(c.vs_baseline["p_value"])]
    for config, adjusted in zip(tested, holm([c.vs_baseline["p_value"] for c in tested])):
        config.vs_baseline |= {"p_adjusted": adjusted, "compared": len(tested),
                               "significant": config.vs_baseline["significant"] and adjusted < LEVEL}
    for config in tested_configs:
        config.vs_baseline["verdict"] = _verdict(config.name, base_name, metric, config.vs_baseline,
                                                 max(len(config.runs), len(base.runs)))
    return base


def _logged(corpus: CorpusScore | None) -> str:
    """What a test needs from each run's per-report table: its scores, or a corpus-level score's two
    sides (an evaluation logged before the per-report table held CheXbert's labels has none)."""
    return "per-report scores" if corpus is None else f"per-report {corpus.reference} and {corpus.candidate}"


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values tested together: the smallest times their number, the
    next times one less, each at least the one before, at most 1; an adjusted p under the level keeps
    the chance of any false finding among them under it. (scipy has Benjamini-Hochberg's
    `false_discovery_control`, which bounds the share of false findings instead, not Holm's.)"""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _verdict(name: str, base_name: str, metric: str, tested: dict, most_runs: int) -> str:
    """The verdict's sentence; `most_runs` is the most seeds either side finished."""
    said = "beat" if tested["significant"] else "did not beat"
    unit = "" if corpus_score(metric) else " per report"  # a corpus score's difference is in its points
    interval = f"{tested['difference']:+.3f} [{tested['ci_low']:+.3f}, {tested['ci_high']:+.3f}]{unit}"
    if tested.get("confidence", 0.95) > 0.95:
        interval += f" ({tested['confidence']:.1%} interval: 95% for the configurations tested together)"
    p = f"p = {tested['p_value']:.3g}"
    if tested.get("compared", 1) > 1:
        p += f", {tested['p_adjusted']:.3g} adjusted for the {tested['compared']} configurations tested (Holm)"
    if tested["seeds"] < 2:
        remedy = ("only one seed finished on both sides: rerun the failed trials (radlab sweep --resume)"
                  if most_runs > 1 else "train each with several seeds (sweep.axes.seed: [0, 1, 2])")
        return (f"{name} {said} the baseline {base_name} significantly on {metric}: difference {interval}, "
                f"{p} (paired permutation test, {tested['n']} reports); one training run each, so this "
                f"compares two trained models, not the configurations: {remedy} to compare those")
    per_seed = ", ".join(f"seed {s} {d:+.3f}" for s, d in tested["per_seed"].items())
    pooled = "per-report statistics pooled" if corpus_score(metric) else "scores averaged"
    return (f"{name} {said} the baseline {base_name} significantly on {metric} over {tested['seeds']} training "
            f"seeds: difference {interval} (seeds and patients resampled), {p} (paired permutation test on "
            f"{tested['n']} reports, {pooled} over seeds); per seed: {per_seed}")


def challenge_alias(tracker: Tracker, alias: str, version: str, run_id: str, metric: str, resamples: int) -> dict:
    """Whether the sweep's best, registered as `version` from the run `run_id`, takes `alias` (the
    one serving resolves) from the version holding it: only by beating it on the objective's
    per-report score (corpus BLEU, label F1, F1-CheXbert: through each report's statistics), in a
    paired test over the reports both were evaluated on (p < LEVEL and the interval on the better
    side); a first version takes it unopposed. Point values from two evaluations are not compared:
    they may be of other reports, and a chance difference would hand the alias back and forth.
    Returns {"moved", "verdict"} and, where tested, the comparison."""
    holder = tracker.alias_holder(alias)
    if holder is None:
        tracker.set_alias(alias, version)
        return {"moved": True, "verdict": f"version {version} took alias '{alias}', which no version held"}
    kept = f"version {holder.version} keeps alias '{alias}'"
    score, corpus = score_of(metric)[1], corpus_score(metric)
    if score.per_report is None and corpus is None:
        return {"moved": False, "verdict": f"{kept}: {metric} is corpus-level, with no per-report score to test "
                                           f"version {version} against it (set the alias in the MLflow UI to move it)"}
    mine, theirs = (tracker.read_table(run, "eval/trained/per_report.json") for run in (run_id, holder.run_id))
    reports = [reports_from_table(table, corpus) for table in (mine, theirs) if table is not None] if corpus else []
    if mine is None or theirs is None or None in reports:
        return {"moved": False, "verdict": f"{kept}: no {_logged(corpus)} logged to test version {version} against it"}
    patients_of = (patients_from_table(theirs) or {}) | (patients_from_table(mine) or {})
    tested = (versus_corpus({0: reports[0]}, {0: reports[1]}, metric, resamples, patients_of=patients_of or None)
              if corpus
              else versus(scores_from_table(mine), scores_from_table(theirs), score.per_report, score.higher_is_better,
                          resamples, patients_of or None))
    if math.isnan(tested["p_value"]):
        return {"moved": False, "verdict": f"{kept}: it was evaluated on other reports than version {version} "
                                           f"({tested['n']} in common), so the two cannot be compared"}
    if tested["significant"]:
        tracker.set_alias(alias, version)
    said = (f"version {version} took alias '{alias}' from version {holder.version}" if tested["significant"] else
            f"{kept}: version {version} did not beat it significantly")
    return tested | {"moved": tested["significant"], "verdict": (
        f"{said} on {metric}: difference {tested['difference']:+.3f} [{tested['ci_low']:+.3f}, "
        f"{tested['ci_high']:+.3f}]{'' if corpus else ' per report'}, p = {tested['p_value']:.3g} (paired "
        f"permutation test, {tested['n']} reports both were evaluated on)")}
