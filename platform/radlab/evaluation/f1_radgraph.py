"""F1-RadGraph (Delbrouck et al. 2022): RadGraph's entity and relation graph of the reference and of
the generated report, compared per report with the `radgraph` package's rewards and averaged.

That package (StanfordAIMI, 0.1.x) vendors an AllenNLP that calls tokenizer methods transformers 5
removed, so it cannot be imported beside radlab. It runs instead in an interpreter of its own that
the user names in `eval.radgraph_python` (a venv with radgraph==0.1.18 and transformers==4.57.6):
radlab sends the pairs to radgraph_worker.py there as JSON and reads one reward per pair back. The
model folder, `eval.radgraph_weights`, is an extracted RRG_scorers archive (radgraph.tar.gz,
radgraph-xl.tar.gz, ...: config.json, vocabulary/, weights.th); `eval.radgraph_model` says which
release it is (the package tokenizes reports per release). The worker runs with the Hugging Face hub
offline; `eval.radgraph_bert` points the model's config at a local copy of the BERT it names.
Reported: the "partial" reward (entities match on tokens, label and whether they have a relation;
LLaVA-Rad's column) with its bootstrap interval, and the "simple" and "complete" rewards, all x100.
An empty report scores 0, as in the package. (This module is not called radgraph.py: the worker's
folder is first on the worker's sys.path, where that name would hide the package.)
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from radlab.evaluation import ScorerError
from radlab.evaluation.resampling import Clusters, Interval, bootstrap

WORKER = Path(__file__).with_name("radgraph_worker.py")
MODEL_FILES = ("config.json", "vocabulary", "weights.th")


def stage_model(weights: Path, model_type: str, bert: Path | None, cache: Path) -> str:
    """Lays out `cache/<model_type>/`, where the package looks for its model: links to the user's
    vocabulary and weights and their config.json, with the BERT swapped for `bert` when given.
    Returns the BERT the staged config names."""
    for name in MODEL_FILES:
        if not (weights / name).exists():
            raise ScorerError(f"eval.radgraph_weights: {weights} has no {name} (expected an extracted "
                              f"RRG_scorers RadGraph archive: {', '.join(MODEL_FILES)})")
    if not (weights / "vocabulary" / f"{model_type}__ner_labels.txt").is_file():
        found = sorted(p.name.split("__")[0] for p in (weights / "vocabulary").glob("*__ner_labels.txt"))
        raise ScorerError(f"eval.radgraph_model: {model_type} does not match the model in {weights} "
                          f"(its labels are for: {', '.join(found) or 'no release'})")
    try:
        config = json.loads((weights / "config.json").read_text())
        bert_entries = [config["dataset_reader"]["token_indexers"]["bert"],
                        config["model"]["embedder"]["token_embedders"]["bert"]]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ScorerError(f"eval.radgraph_weights: {weights / 'config.json'} is not a RadGraph (DyGIE) config: "
                          f"{err!r}") from err
    if bert is not None:
        if not (bert / "config.json").is_file():
            raise ScorerError(f"eval.radgraph_bert: {bert} is not a transformers model folder (no config.json)")
        for entry in bert_entries:
            entry["model_name"] = str(bert.resolve())
    folder = cache / model_type
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    for name in MODEL_FILES[1:]:
        (folder / name).symlink_to((weights / name).resolve())
    return bert_entries[0]["model_name"]


def radgraph_rewards(pairs: list[tuple[str, str]], python: Path, weights: Path, model_type: str,
                     bert: Path | None) -> dict[str, np.ndarray]:
    """Per-pair rewards in [0, 1] by level (simple, partial, complete), from the RadGraph interpreter."""
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise ScorerError(f"eval.radgraph_python: no Python interpreter at {python}")
    with tempfile.TemporaryDirectory(prefix="radlab-radgraph-") as cache:
        bert_name = stage_model(weights, model_type, bert, Path(cache))
        request = {"model_type": model_type, "model_cache_dir": cache,
                   "refs": [r for r, _ in pairs], "hyps": [c for _, c in pairs]}
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}
        done = subprocess.run([str(python), str(WORKER)], input=json.dumps(request), capture_output=True,
                              text=True, encoding="utf-8", errors="replace", env=env)
    try:
        answer = json.loads(done.stdout)
    except json.JSONDecodeError:
        answer = {"error": "\n".join(done.stderr.strip().splitlines()[-6:]) or f"exit status {done.returncode}"}
    if not isinstance(answer, dict):
        answer = {"error": f"it answered {done.stdout[:200]!r}"}
    if done.returncode != 0 or "error" in answer:
        hint = ("" if Path(bert_name).is_dir() else f" (the model's config names the BERT {bert_name}, which is "
                f"not a local folder and is not downloaded: set eval.radgraph_bert to a local copy)")
        raise ScorerError(f"eval.radgraph_python: the RadGraph scorer in {python} failed on the model in "
                          f"{weights}: {answer.get('error')}{hint}")
    try:
        rewards = {level: np.asarray(values, dtype=float) for level, values in answer.items()}
    except (TypeError, ValueError) as err:
        raise ScorerError(f"eval.radgraph_python: the RadGraph scorer in {python} answered {done.stdout[:200]!r}") from err
    if set(rewards) != {"simple", "partial", "complete"} or any(len(v) != len(pairs) for v in rewards.values()):
        raise ScorerError(f"eval.radgraph_python: the RadGraph scorer in {python} did not score all {len(pairs)} pairs")
    return rewards


def radgraph_metrics(rewards: dict[str, np.ndarray], resamples: int, clusters: Clusters = None) -> dict[str, float]:
    """The partial reward x100 as clinical/radgraph_f1, and the simple and complete rewards x100,
    each with its interval (resampling the pairs by `clusters`)."""
    def interval(level: str) -> Interval:
        return bootstrap(rewards[level] * 100, resamples=resamples, clusters=clusters)

    return {**interval("partial").metrics("clinical/radgraph_f1"),
            **interval("simple").metrics("clinical/radgraph_f1_simple"),
            **interval("complete").metrics("clinical/radgraph_f1_complete")}
