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
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from radlab.data.dataset import Example
from radlab.data.pairs import PairDataset, collate_pairs, encode_report, text_batch
from radlab.evaluation.resampling import bootstrap
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
        zero-shot AUROC (where every resample holds a finding with both classes), drawing patients."""
        out: dict[str, float] = {}
        for name, hit in self.hits.items():
            interval = bootstrap(hit, resamples=resamples, clusters=self.patients)
            out |= {f"{name}_ci_low": interval.low, f"{name}_ci_high": interval.high}
        if self.zero_shot:
            interval = bootstrap(np.arange(len(self.ids)), partial(auroc_mean, self.zero_shot), resamples,
                                 clusters=self.patients)
            if np.isfinite([interval.low, interval.high]).all():
                out |= {"zero_shot/auroc_mean_ci_low": interval.low, "zero_shot/auroc_mean_ci_high": interval.high}
        return out

    def per_pair(self) -> dict[str, dict[str, float]]:
        """id -> {Recall@K metric -> that pair's hit}, as `compare.compare_systems` takes them."""
        return {pair: {name: float(hit[k]) for name, hit in self.hits.items()} for k, pair in enumerate(self.ids)}


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
