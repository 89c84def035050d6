"""Retrieval evaluation of a stage 0 encoder: image-to-report and report-to-image Recall@K, exact
and label-aware, and zero-shot classification of each finding by text prompts (AUROC).

An exact hit is the paired report or a verbatim copy of it (normal studies share one wording);
a label-aware hit is any report with the same set of positive CheXpert observations.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from radlab.data.dataset import Example
from radlab.data.pairs import PairDataset, collate_pairs, encode_report, text_batch
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


def recall_at(similarity: torch.Tensor, relevant: torch.Tensor, ks=KS) -> dict[int, float]:
    """Share of queries (rows) with a relevant item among their top K columns."""
    order = similarity.argsort(dim=1, descending=True)
    hits = relevant.gather(1, order)
    return {k: float(hits[:, :k].any(dim=1).float().mean()) for k in ks if k <= similarity.shape[1]}


def retrieval_metrics(images: torch.Tensor, texts: torch.Tensor, reports: list[str],
                      labels: list[frozenset[str]]) -> dict[str, float]:
    similarity = images @ texts.T
    same_text = torch.tensor([[a == b for b in reports] for a in reports])
    same_labels = torch.tensor([[a == b for b in labels] for a in labels])
    metrics: dict[str, float] = {}
    for kind, relevant in (("", same_text), ("label_", same_labels)):
        for direction, sim in (("i2t", similarity), ("t2i", similarity.T)):
            for k, value in recall_at(sim, relevant).items():
                metrics[f"retrieval/{kind}{direction}_R{k}"] = value
    return metrics


@torch.no_grad()
def zero_shot_auroc(encoder: DualEncoder, images: torch.Tensor, labels: list[frozenset[str]], tokenizer,
                    max_length: int) -> dict[str, float]:
    """AUROC per finding of (similarity to the present prompt - similarity to the absent one);
    findings with only one class in the split are left out."""
    out: dict[str, float] = {}
    for finding, prompts in ZERO_SHOT_PROMPTS.items():
        truth = np.array([finding in positives for positives in labels])
        if truth.all() or not truth.any():
            continue
        batch = text_batch([encode_report(tokenizer, p, max_length)[0] for p in prompts], tokenizer.pad_token_id)
        present, absent = encoder.encode_texts(batch["input_ids"], batch["attention_mask"])
        score = (images @ (present - absent)).numpy()
        out[f"zero_shot/auroc/{finding}"] = float(roc_auc_score(truth, score))
    if out:
        out["zero_shot/auroc_mean"] = float(np.mean(list(out.values())))
    return out


def evaluate_retrieval(encoder: DualEncoder, examples: list[Example], tokenizer, transform: ImageTransform,
                       max_length: int) -> dict[str, float]:
    images, texts, kept, truncated = embed_pairs(encoder, examples, tokenizer, transform, max_length)
    reports = [examples[i].findings for i in kept]
    labels = [examples[i].labels for i in kept]
    metrics = retrieval_metrics(images, texts, reports, labels)
    metrics.update(zero_shot_auroc(encoder, images, labels, tokenizer, max_length))
    metrics |= {"retrieval/n_pairs": float(len(kept)), "retrieval/n_skipped_images": float(len(examples) - len(kept)),
                "retrieval/n_truncated_reports": float(truncated)}
    return metrics
