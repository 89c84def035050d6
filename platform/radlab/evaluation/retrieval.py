"""Retrieval evaluation of a stage 0 encoder: image-to-report and report-to-image Recall@K, exact
and label-aware, and zero-shot classification of each finding by text prompts (AUROC).

An exact hit is the paired report or a verbatim copy of it (normal studies share one wording);
a label-aware hit is any report with the same set of positive CheXpert observations. Each pair is a
query both ways, so a Recall@K is the mean of one hit (0 or 1) per pair: `read_out` keeps them, for
intervals that draw each patient's pairs together and for paired tests of two encoders on the same
pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from radlab.data.dataset import Example
from radlab.data.pairs import PairDataset, collate_pairs, encode_report, text_batch
from radlab.evaluation.resampling import bootstrap, cluster_codes, statistic_interval, two_sided_p
from radlab.formats.images import ImageTransform
from radlab.model.encoder import DualEncoder

KS = (1, 5, 10)
# (present, absent) prompts per CheXpert observation, worded as chest X-ray reports word them.
ZERO_SHOT_PROMPTS = {
    "No Finding": ("The lungs are clear. No acute cardiopulmonary process.", "There is an acute abnormality."),
    "Lung Opacity": ("There is a lung opacity.", "No focal opacity."),
    "Consolidation": ("There is consolidation.", "No focal consolidation."),
    "Lung Lesion": ("A nodule is seen.", "No lung nodule or mass."),
    "Pleural Effusion": ("There is a pleural effusion.", "No pleural effusion."),
    "Pneumothorax": ("There is a pneumothorax.", "No pneumothorax."),
    "Edema": ("There is pulmonary edema.", "No pulmonary edema."),
    "Cardiomegaly": ("The heart is enlarged.", "The heart size is normal."),
    "Atelectasis": ("There is atelectasis.", "No atelectasis."),
}


@torch.no_grad()
def embed_pairs(encoder: DualEncoder, examples: list[Example], tokenizer, transform: ImageTransform,
                max_length: int, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
    """(image embeddings, report embeddings, indices of the examples kept, reports truncated)."""
    encoder.eval()
    loader = DataLoader(PairDataset(examples, tokenizer, transform, max_length), batch_size=batch_size,
                        collate_fn=lambda items: collate_pairs(items, tokenizer.pad_token_id))
    images, texts, kept, truncated = [], [], [], 0
    for batch in loader:
        truncated += batch["truncated"]
        if "pixel_values" not in batch:
            continue
        image, text = encoder(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        images.append(image)
        texts.append(text)
        kept += batch["index"].tolist()
    if not kept:
        raise ValueError("no image of the split could be read: nothing to retrieve")
    return torch.cat(images), torch.cat(texts), kept, truncated


def hits_at(similarity: torch.Tensor, relevant: torch.Tensor, ks=KS) -> dict[int, np.ndarray]:
    """For each K, whether each query (row) has a relevant item among its top K columns (1 or 0)."""
    order = similarity.argsort(dim=1, descending=True)
    hits = relevant.gather(1, order)
    return {k: hits[:, :k].any(dim=1).double().numpy() for k in ks if k <= similarity.shape[1]}


def retrieval_hits(images: torch.Tensor, texts: torch.Tensor, reports: list[str],
                   labels: list[frozenset[str]]) -> dict[str, np.ndarray]:
    """Each Recall@K metric's hit (1 or 0) for each pair as a query."""
    similarity = images @ texts.T
    same_text = torch.tensor([[a == b for b in reports] for a in reports])
    same_labels = torch.tensor([[a == b for b in labels] for a in labels])
    hits: dict[str, np.ndarray] = {}
    for kind, relevant in (("", same_text), ("label_", same_labels)):
        for direction, sim in (("i2t", similarity), ("t2i", similarity.T)):
            for k, hit in hits_at(sim, relevant).items():
                hits[f"retrieval/{kind}{direction}_R{k}"] = hit
    return hits


@torch.no_grad()
def zero_shot_scores(encoder: DualEncoder, images: torch.Tensor, labels: list[frozenset[str]], tokenizer,
                     max_length: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """finding -> (whether each image has it, its score: similarity to the present prompt minus
    similarity to the absent one); findings with only one class in the split are left out."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for finding, prompts in ZERO_SHOT_PROMPTS.items():
        truth = np.array([finding in positives for positives in labels])
        if truth.all() or not truth.any():
            continue
        batch = text_batch([encode_report(tokenizer, p, max_length)[0] for p in prompts], tokenizer.pad_token_id)
        present, absent = encoder.encode_texts(batch["input_ids"], batch["attention_mask"])
        out[finding] = truth, (images @ (present - absent)).numpy()
    return out


def auroc_mean(scores: dict[str, tuple[np.ndarray, np.ndarray]], rows: np.ndarray) -> float:
    """The mean AUROC over the findings with both classes among the images `rows` (NaN if none has)."""
    rows = rows.astype(int)
    values = [roc_auc_score(truth[rows], score[rows]) for truth, score in scores.values() if 0 < truth[rows].sum() < len(rows)]
    return float(np.mean(values)) if values else float("nan")


def auroc_metrics(scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The AUROC of each finding of `zero_shot_scores`, and their mean."""
    out = {f"zero_shot/auroc/{finding}": float(roc_auc_score(truth, score)) for finding, (truth, score) in scores.items()}
    if scores:
        out["zero_shot/auroc_mean"] = auroc_mean(scores, np.arange(len(next(iter(scores.values()))[0])))
    return out


@dataclass
class ReadOut:
    """An encoder's retrieval on a split: `metrics` (each score's point value and the counts), each
    Recall@K metric's hit per pair (`hits`) for the pairs `ids` of the patients `patients`, and the
    zero-shot scores (`zero_shot_scores`)."""
    metrics: dict[str, float]
    hits: dict[str, np.ndarray]
    ids: list[str]
    patients: list[str]
    zero_shot: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def intervals(self, resamples: int) -> dict[str, float]:
        """The 95% interval (`<name>_ci_low`, `<name>_ci_high`) of each Recall@K and of the mean
        zero-shot AUROC (see `resampling.statistic_interval` for resamples that hold no finding with
        both classes), drawing patients."""
        out: dict[str, float] = {}
        for name, hit in self.hits.items():
            interval = bootstrap(hit, resamples=resamples, clusters=self.patients)
            out |= {f"{name}_ci_low": interval.low, f"{name}_ci_high": interval.high}
        if self.zero_shot:
            low, high = statistic_interval(partial(auroc_mean, self.zero_shot), len(self.ids), resamples, 0,
                                           self.patients)
            if np.isfinite([low, high]).all():
                out |= {"zero_shot/auroc_mean_ci_low": low, "zero_shot/auroc_mean_ci_high": high}
        return out

    def per_pair(self) -> dict[str, dict[str, float]]:
        """id -> {Recall@K metric -> that pair's hit}, as `compare.compare_systems` takes them."""
        return {pair: {name: float(hit[k]) for name, hit in self.hits.items()} for k, pair in enumerate(self.ids)}


def _auroc(truth: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The AUROC of each row of `values` (..., n) for the classes `truth` (n,): the Mann-Whitney U
    of their ranks (ties count a half, as in roc_auc_score), for many rows at once."""
    positives = int(truth.sum())
    negatives = len(truth) - positives
    ranks = rankdata(values, axis=-1)
    return (ranks[..., truth].sum(axis=-1) - positives * (positives + 1) / 2) / (positives * negatives)


def compare_auroc(first: ReadOut, second: ReadOut, resamples: int, seed: int = 0) -> dict | None:
    """The mean zero-shot AUROC of two encoders on the same pairs, first minus second, as a row of
    `compare.compare_systems`: its 95% interval draws patients (the same draws for both encoders;
    see `resampling.statistic_interval`), and its p-value is the paired permutation
    test of Bandos, Rockette and Gur (2005): each encoder's scores are replaced by their ranks within
    each finding, which leaves its AUROC as it is and puts the two encoders on one scale, and each
    permutation swaps the two encoders' ranks on all of a patient's images at once. Only the pairs
    both encoders read are compared (an image one could not decode is left out of both), as the
    Recall@K rows; None where either encoder has no zero-shot scores or they share fewer than two pairs."""
    findings = [name for name in first.zero_shot if name in second.zero_shot]
    theirs = {pair: k for k, pair in enumerate(second.ids)}
    mine = [k for k, pair in enumerate(first.ids) if pair in theirs]
    if not findings or len(mine) < 2:
        return None
    other = [theirs[first.ids[k]] for k in mine]
    truths = [first.zero_shot[name][0][mine] for name in findings]
    ranked = [np.stack([rankdata(first.zero_shot[name][1][mine]), rankdata(second.zero_shot[name][1][other])]) /
              len(mine) for name in findings]
    patients = [first.patients[k] for k in mine]

    def difference(rows: np.ndarray) -> float:
        pairs = [_auroc(truth[rows], both[:, rows]) for truth, both in zip(truths, ranked) if 0 < truth[rows].sum() < len(rows)]
        return float(np.mean([a - b for a, b in pairs])) if pairs else float("nan")

    n = len(mine)
    observed = difference(np.arange(n))
    rng = np.random.default_rng(seed)
    low, high = statistic_interval(difference, n, resamples, rng, patients)
    codes = cluster_codes(patients, n)
    swapped = (rng.random((max(resamples, 999), int(codes.max()) + 1)) < 0.5)[:, codes]  # (permutations, images)
    permuted = np.mean([np.subtract(*_auroc(truth, np.where(swapped, both[::-1, None], both[:, None])))
                        for truth, both in zip(truths, ranked)], axis=0)
    return {"metric": "zero_shot/auroc_mean", "n": n, "difference": observed, "ci_low": float(low),
            "ci_high": float(high), "p_value": two_sided_p(permuted, observed)}


def read_out(encoder: DualEncoder, examples: list[Example], tokenizer, transform: ImageTransform,
             max_length: int) -> ReadOut:
    images, texts, kept, truncated = embed_pairs(encoder, examples, tokenizer, transform, max_length)
    reports = [examples[i].findings for i in kept]
    labels = [examples[i].labels for i in kept]
    hits = retrieval_hits(images, texts, reports, labels)
    metrics = {name: float(hit.mean()) for name, hit in hits.items()}
    zero_shot = zero_shot_scores(encoder, images, labels, tokenizer, max_length)
    metrics |= auroc_metrics(zero_shot)
    metrics |= {"retrieval/n_pairs": float(len(kept)), "retrieval/n_skipped_images": float(len(examples) - len(kept)),
                "retrieval/n_truncated_reports": float(truncated)}
    return ReadOut(metrics, hits, [examples[i].id for i in kept], [examples[i].patient or examples[i].id for i in kept],
                   zero_shot)


def evaluate_retrieval(encoder: DualEncoder, examples: list[Example], tokenizer, transform: ImageTransform,
                       max_length: int) -> dict[str, float]:
    """The metrics of `read_out` (a stage 0 validation's)."""
    return read_out(encoder, examples, tokenizer, transform, max_length).metrics
