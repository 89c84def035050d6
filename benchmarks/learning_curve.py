"""Does radlab cost learning? The quickstart trained through radlab (`run_experiment`: Ray Train,
checkpoints, MLflow) and through a plain PyTorch loop (one process, torch on all threads, the same
model, tokenizer, templates, optimizer and schedule, and in each step the same examples as radlab's
workers draw for the same training seed), both evaluated by the same code: findings generated on
the test split, judged by the reference judge.

    python benchmarks/learning_curve.py [--fractions 0.25 0.5 1] [--minutes 1 2 4] [--seeds 0 1]

Each side trains the quickstart's recipe (stage 1 on the plain template, stage 2 on the chat one)
with its steps scaled by each fraction, once per training seed; the training wall time of each run
(radlab: its stages' MLflow runs from start to end, start-up and checkpoints included) and its
significant errors per report make a curve per seed, read at 1, 2 and 4 minutes of training
(between measured points, linearly). Every curve starts at 0 s from the untrained model's errors
(built for the seed as the plain loop builds it and judged once: it writes no findings, so it
misses every reference finding, whichever random weights it has), and a side that has finished
the whole recipe keeps its last model's errors from then on. At each fraction the two sides are compared paired on the test
reports (difference, 95% bootstrap interval, permutation p-value).
Goal: radlab's significant errors within 10% of the plain loop's at each point (medians over seeds).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import report  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from plain_loop import train_stage  # noqa: E402
from rich.console import Console  # noqa: E402

from radlab.config import load_experiment, with_absolute_paths  # noqa: E402
from radlab.data.dataset import synthetic_root, training_texts  # noqa: E402
from radlab.evaluation.compare import paired, per_report_scores, scores_from_table  # noqa: E402
from radlab.evaluation.generate import generate_findings  # noqa: E402
from radlab.evaluation.scoring import score  # noqa: E402
from radlab.formats.tokenizer import train_tokenizer  # noqa: E402
from radlab.model.build import build_model  # noqa: E402
from radlab.model.towers import image_transform  # noqa: E402
from radlab.pipeline import run_experiment  # noqa: E402
from radlab.tracking.runs import Tracker  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
METRIC = "chexprompt/significant_mean"
PER_REPORT = "chexprompt/significant"


def quickstart(root: Path, fraction: float, name: str, seed: int):
    base = load_experiment(ROOT / "experiments/quickstart.yaml")
    steps = {stage: max(1, round(getattr(base, stage).max_steps * fraction)) for stage in ("stage1", "stage2")}
    return with_absolute_paths(load_experiment(ROOT / "experiments/quickstart.yaml", [
        f"name={name}", f"seed={seed}", f"data.synthetic.root={ROOT / 'data/synthetic'}", "eval.compare_untrained=false", "eval.grounding=false",
        f"tracking.uri=sqlite:///{root}/mlflow.db", f"tracking.artifact_root={root}/artifacts",
        "tracking.register_as=null", f"ray.storage_path={root}/ray-{name}",
        *(f"{stage}.max_steps={n}" for stage, n in steps.items()),
        *(f"{stage}.checkpoint_every={n}" for stage, n in steps.items())]))


def radlab_point(experiment) -> tuple[float, float, dict]:
    """(training wall time in s, significant errors per report, per-report scores) of one
    `run_experiment`."""
    summary = run_experiment(experiment, "", Console(quiet=True))
    client = MlflowClient(experiment.tracking.uri)
    tags = client.get_run(summary.parent_run_id).data.tags
    runs = [client.get_run(tags[f"radlab.{stage}.run"]).info for stage in ("stage1", "stage2")]
    table = Tracker(experiment).read_table(summary.parent_run_id, "eval/trained/per_report.json")
    return (runs[-1].end_time - runs[0].start_time) / 1000, summary.metrics[METRIC], scores_from_table(table)


def plain_point(experiment, tokenizer) -> tuple[float, float, dict]:
    """The same recipe in a plain loop: (training wall time in s, significant errors per report,
    per-report scores)."""
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(experiment.seed)
    started = time.perf_counter()
    model = build_model(experiment.model, tokenizer, experiment.data.max_length)
    for stage in ("stage1", "stage2"):
        train_stage(model, experiment, stage, tokenizer)
    seconds = time.perf_counter() - started
    predictions = generate_findings(model.eval(), tokenizer, experiment, image_transform(experiment.model.vision),
                                    experiment.eval.split, experiment.eval.limit, template=experiment.stage2.template)
    scored = score(experiment, predictions)
    return seconds, scored.metrics[METRIC], per_report_scores(predictions, scored)


def at(minutes: float, curve: list[tuple[float, float]]) -> float:
    """The curve's errors at `minutes` of training: linear between measured points (the first at 0 s,
    untrained), the last point's beyond it (the recipe is done; no more training happens)."""
    seconds, errors = zip(*sorted(curve), strict=True)
    return float(np.interp(minutes * 60, seconds, errors))


def untrained_errors(experiment, tokenizer) -> float:
    """Significant errors per report of the model both sides start from for the experiment's seed."""
    torch.manual_seed(experiment.seed)
    model = build_model(experiment.model, tokenizer, experiment.data.max_length)
    predictions = generate_findings(model.eval(), tokenizer, experiment, image_transform(experiment.model.vision),
                                    experiment.eval.split, experiment.eval.limit, template=experiment.stage2.template)
    return score(experiment, predictions).metrics[METRIC]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    curves = {(side, seed): [] for side in ("plain", "radlab") for seed in args.seeds}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer = None
        for index, fraction in enumerate(args.fractions):
            for seed in args.seeds:
                experiment = quickstart(root, fraction, f"curve-{index}-seed{seed}", seed)
                synthetic_root(experiment.data)
                if tokenizer is None:
                    tokenizer = train_tokenizer(training_texts(experiment.data), root / "tokenizer",
                                                experiment.model.language.vocab_size)
                if not index:
                    start = untrained_errors(experiment, tokenizer)
                    print(f"untrained, seed {seed}: {start:.3f} significant errors per report", flush=True)
                    for side in ("plain", "radlab"):
                        curves[side, seed].append((0.0, start))
                scores = {}
                for side in ("plain", "radlab"):
                    seconds, errors, scores[side] = (plain_point(experiment, tokenizer) if side == "plain"
                                                     else radlab_point(experiment))
                    curves[side, seed].append((seconds, errors))
                    print(f"{side:6s} {fraction:.2f} of the quickstart's steps, seed {seed}: {seconds:6.1f} s of "
                          f"training, {errors:.3f} significant errors per report", flush=True)
                ids = [i for i in scores["radlab"] if i in scores["plain"]]
                versus = paired([scores["radlab"][i].get(PER_REPORT, np.nan) for i in ids],
                                [scores["plain"][i].get(PER_REPORT, np.nan) for i in ids])
                print(f"  radlab - plain, paired on {versus.n} reports: {versus.difference:+.3f} "
                      f"[{versus.low:+.3f}, {versus.high:+.3f}], p {versus.p_value:.2f}", flush=True)
    for minutes in args.minutes:
        points = {side: [at(minutes, curves[side, seed]) for seed in args.seeds] for side in ("plain", "radlab")}
        report("learning_curve", f"significant errors per report after {minutes:g} min of training",
               points["radlab"], points["plain"], "plain loop", "errors/report", 1.1, higher_is_better=False, digits=3)


if __name__ == "__main__":
    main()
