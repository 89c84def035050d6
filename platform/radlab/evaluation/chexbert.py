"""F1-CheXbert: the CheXbert labeler (Smit et al. 2020) reads the 14 CheXpert observations off the
reference and the generated report; F1 compares the two label sets.

The labeler is BERT with one linear head per observation on the [CLS] state: 13 heads with the
classes blank, positive, negative, uncertain (0-3) and a two-class head for No Finding. Its weights
are the `chexbert.pth` of the StanfordAIMI RRG_scorers release (`model_state_dict`, keys under
`module.`), read into transformers' BertModel; the tokenizer and BERT config come from a local
bert-base-uncased folder, since nothing is downloaded. Variants, as named in the metrics: micro and
macro F1 over all 14 observations and over the 5 of the CheXpert competition, with uncertain
counted as negative (LLaVA-Rad's main columns) and, under `_plus`, as positive; each as
scikit-learn's f1_score computes it (zero_division=0), from each report's true and false positives
and negatives, which also pair two systems report by report.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from radlab.evaluation import ScorerError
from radlab.formats.prompts import CHEXPERT

OBSERVATIONS = (*CHEXPERT[1:], "No Finding")  # the labeler's head order
FIVE = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
BLANK, POSITIVE, NEGATIVE, UNCERTAIN = range(4)


class CheXbert(nn.Module):
    def __init__(self, config):
        from transformers import BertModel

        super().__init__()
        self.bert = BertModel(config)
        hidden = config.hidden_size
        self.linear_heads = nn.ModuleList([nn.Linear(hidden, 4) for _ in OBSERVATIONS[:-1]] + [nn.Linear(hidden, 2)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        cls = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        return [head(cls) for head in self.linear_heads]


@functools.lru_cache(maxsize=1)  # a run scores the trained and the untrained model with one labeler
def load_labeler(weights: Path, bert_folder: Path) -> tuple[CheXbert, object]:
    """(labeler, tokenizer) from an RRG_scorers-format checkpoint and a local BERT folder; the labeler
    sits on the GPU where there is one."""
    from transformers import AutoTokenizer, BertConfig

    if not Path(weights).is_file():
        raise ScorerError(f"eval.chexbert_weights: no file at {weights}")
    try:
        config = BertConfig.from_pretrained(bert_folder)
        tokenizer = AutoTokenizer.from_pretrained(bert_folder)
    except (OSError, ValueError) as err:
        raise ScorerError(f"eval.chexbert_bert: {bert_folder} is not a BERT folder with its tokenizer: "
                          f"{str(err)[:300]}") from None
    model = CheXbert(config)
    try:
        saved = torch.load(weights, map_location="cpu", weights_only=True)
        state = saved.get("model_state_dict", saved)
        state = {key.removeprefix("module."): value for key, value in state.items()
                 if not key.endswith("embeddings.position_ids")}  # a buffer older transformers saved
        model.load_state_dict(state, strict=True)
    except (RuntimeError, pickle.UnpicklingError, AttributeError, EOFError) as err:
        raise ScorerError(f"eval.chexbert_weights: {weights} is not a CheXbert checkpoint for the BERT in "
                          f"{bert_folder}: {str(err)[:400]}") from None
    return model.eval().to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer


@torch.no_grad()
def label_reports(model: CheXbert, tokenizer, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """(n, 14) class ids in OBSERVATIONS order; reports longer than BERT's context are truncated."""
    limit = model.bert.config.max_position_embeddings
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer([t.strip() for t in texts[start:start + batch_size]], padding=True, truncation=True,
                          max_length=limit, return_tensors="pt")
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        out.append(torch.stack([head.argmax(-1) for head in logits], dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(OBSERVATIONS)), int)


def positive(labels: np.ndarray, uncertain_positive: bool) -> np.ndarray:
    """Binary presence: positive, and uncertain when `uncertain_positive` (No Finding: class 1)."""
    present = (labels == POSITIVE) | (uncertain_positive & (labels == UNCERTAIN))
    present[:, -1] = labels[:, -1] == 1
    return present


def _f1_scorer(uncertain_positive: bool, columns: list[int], average: str) -> Callable[[np.ndarray], float]:
    """One F1 variant (x100) of summed `f1_statistics`, as scikit-learn's f1_score computes it with
    zero_division=0: micro from the pooled counts, macro the mean of each observation's F1."""
    def score(summed: np.ndarray) -> float:
        tp, fp, fn = summed.reshape(2, 3, len(OBSERVATIONS))[int(uncertain_positive)][:, columns]
        if average == "micro":
            tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
        denominator = 2 * tp + fp + fn
        return 100 * float(np.mean(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)))
    return score


# Every F1-CheXbert variant as a function of summed `f1_statistics`, by the key it is logged under.
CHEXBERT_F1: dict[str, Callable[[np.ndarray], float]] = {
    f"clinical/chexbert{suffix}_f1_{average}_{n}": _f1_scorer(uncertain_positive, columns, average)
    for suffix, uncertain_positive in (("", False), ("_plus", True))
    for n, columns in (("14", list(range(len(OBSERVATIONS)))), ("5", [OBSERVATIONS.index(name) for name in FIVE]))
    for average in ("micro", "macro")}


def f1_statistics(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Each report's true positives, false positives and false negatives of every observation, with
    uncertain as negative and then as positive: (reports, 2 x 3 x 14), every F1 variant's sufficient
    statistics (summed over any set of reports, they give that set's F1s)."""
    counts = []
    for uncertain_positive in (False, True):
        truth, guess = positive(reference, uncertain_positive), positive(candidate, uncertain_positive)
        counts += [truth & guess, ~truth & guess, truth & ~guess]
    return np.concatenate(counts, axis=1).astype(float)


def label_codes(labels: np.ndarray) -> list[str]:
    """Each report's 14 classes as one string of digits, the form a per-report table logs them in."""
    return ["".join(str(int(c)) for c in row) for row in labels]


def labels_of_codes(codes: list[str]) -> np.ndarray:
    return np.array([[int(c) for c in code] for code in codes], dtype=int).reshape(len(codes), len(OBSERVATIONS))


def chexbert_labels(pairs: list[tuple[str, str]], weights: Path, bert_folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(reference labels, candidate labels), each (n, 14), read by the labeler."""
    model, tokenizer = load_labeler(weights, bert_folder)
    labels = label_reports(model, tokenizer, [r for r, _ in pairs] + [c for _, c in pairs])
    return labels[: len(pairs)], labels[len(pairs):]


def disagreements(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per report: how many of the 14 observations one text has and the other not (uncertain as negative)."""
    return (positive(reference, False) != positive(candidate, False)).sum(axis=1)
