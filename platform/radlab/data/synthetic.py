"""A synthetic chest X-ray set: grayscale radiograph-like images whose findings, side, zone and
severity are drawn at random, with a Findings section written by a fixed grammar.

The grammar is invertible: `parse_findings(write_findings(f)) == f` for every drawn finding set,
which is what lets an exact reference judge score generated reports against the truth.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from radlab.formats.prompts import CHEXPERT, SPLIT_FILES, findings_prompt

KINDS = ("consolidation", "effusion", "pneumothorax", "nodule")
SIDES = ("left", "right")
ZONES = ("upper", "lower")
SEVERITIES = ("small", "moderate", "large")
INDICATIONS = ("", "dyspnea", "cough and fever", "chest pain", "evaluate for pneumonia", "shortness of breath")
VIEWS = ("PA", "AP")
# The 14 CheXpert observations, for the label block of each record.
_CHEXPERT_OF = {"consolidation": ("Consolidation", "Lung Opacity"), "effusion": ("Pleural Effusion",),
                "pneumothorax": ("Pneumothorax",), "nodule": ("Lung Lesion",)}


@dataclass(frozen=True, order=True)
class Finding:
    kind: str
    side: str
    zone: str | None = None      # consolidation and nodule
    severity: str | None = None  # consolidation, effusion, pneumothorax


def _sentence(f: Finding) -> str:
    if f.kind == "consolidation":
        return f"There is {f.severity} consolidation in the {f.side} {f.zone} zone."
    if f.kind == "effusion":
        return f"There is a {f.severity} {f.side} pleural effusion."
    if f.kind == "pneumothorax":
        return f"There is a {f.severity} {f.side} pneumothorax."
    return f"A nodule is seen in the {f.side} {f.zone} zone."


_NEGATIVES = {"consolidation": "No focal consolidation.", "effusion": "No pleural effusion.",
              "pneumothorax": "No pneumothorax."}
_OPENING = "The cardiomediastinal silhouette is within normal limits."
_CLEAR = "The lungs are otherwise clear."
_PATTERNS = [
    (re.compile(r"There is (small|moderate|large) consolidation in the (left|right) (upper|lower) zone\."),
     lambda m: Finding("consolidation", m[2], m[3], m[1])),
    (re.compile(r"There is a (small|moderate|large) (left|right) pleural effusion\."),
     lambda m: Finding("effusion", m[2], None, m[1])),
    (re.compile(r"There is a (small|moderate|large) (left|right) pneumothorax\."),
     lambda m: Finding("pneumothorax", m[2], None, m[1])),
    (re.compile(r"A nodule is seen in the (left|right) (upper|lower) zone\."),
     lambda m: Finding("nodule", m[1], m[2], None)),
]


def write_findings(findings: list[Finding]) -> str:
    """The Findings section for a set of findings, in the grammar's canonical order."""
    findings = sorted(findings)
    present = {f.kind for f in findings}
    parts = [_OPENING] + [_sentence(f) for f in findings]
    parts += [text for kind, text in _NEGATIVES.items() if kind not in present]
    if findings:
        parts.append(_CLEAR)
    return " ".join(parts)


@dataclass
class ParsedReport:
    findings: list[Finding]
    unparsed: list[str]          # sentences outside the grammar
    negated: list[str]           # kinds stated absent


def parse_findings(text: str) -> ParsedReport:
    """Invert `write_findings`; sentences the grammar does not know are returned as unparsed."""
    findings: list[Finding] = []
    unparsed: list[str] = []
    negated: list[str] = []
    for sentence in re.findall(r"[^.]+\.?", text.strip()):
        sentence = sentence.strip()
        if not sentence or sentence in (_OPENING, _CLEAR):
            continue
        negative = [kind for kind, neg in _NEGATIVES.items() if neg == sentence]
        if negative:
            negated += negative
            continue
        for pattern, make in _PATTERNS:
            match = pattern.fullmatch(sentence)
            if match:
                findings.append(make(match))
                break
        else:
            unparsed.append(sentence)
    return ParsedReport(sorted(findings), unparsed, negated)


def draw_findings(rng: np.random.Generator) -> list[Finding]:
    """0-2 findings of distinct kinds, each with its side, zone and severity."""
    count = rng.choice(3, p=[0.3, 0.45, 0.25])
    kinds = rng.choice(len(KINDS), size=count, replace=False)
    out = []
    for k in sorted(kinds):
        kind = KINDS[k]
        side = SIDES[rng.integers(2)]
        zone = ZONES[rng.integers(2)] if kind in ("consolidation", "nodule") else None
        severity = SEVERITIES[rng.integers(3)] if kind != "nodule" else None
        out.append(Finding(kind, side, zone, severity))
    return sorted(out)


def render(findings: list[Finding], size: int, view: str, rng: np.random.Generator) -> np.ndarray:
    """A uint8 image: bright body, dark lungs, a heart, ribs, and each finding drawn where it is.

    The image is in radiological convention: the patient's right lung on the image's left.
    """
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size), 0.75)
    jitter = rng.normal(0, 0.012, 4)
    lungs = {}
    for side, cx in (("right", 0.3 + jitter[0]), ("left", 0.7 + jitter[1])):
        mask = ((xx - cx) / 0.16) ** 2 + ((yy - 0.5 - jitter[2]) / 0.36) ** 2 <= 1
        lungs[side] = (mask, cx)
        img[mask] = 0.2
    for rib in np.linspace(0.22, 0.8, 7):
        img[np.abs(yy - rib - 0.03 * np.abs(xx - 0.5)) < 0.01] += 0.1
    heart_r = 0.1 if view == "PA" else 0.12
    img[((xx - 0.5) / heart_r) ** 2 + ((yy - 0.72 + jitter[3]) / (heart_r * 0.9)) ** 2 <= 1] = 0.55
    scale = {"small": 0.6, "moderate": 0.85, "large": 1.1, None: 1.0}
    for f in findings:
        mask, cx = lungs[f.side]
        zy = 0.33 if f.zone == "upper" else 0.66
        s = scale[f.severity]
        if f.kind == "consolidation":
            blob = ((xx - cx) / (0.09 * s)) ** 2 + ((yy - zy) / (0.1 * s)) ** 2 <= 1
            img[blob & mask] = 0.55
        elif f.kind == "effusion":
            level = 0.82 - 0.16 * s
            img[mask & (yy > level + 0.04 * np.abs(xx - cx) / 0.16)] = 0.8
        elif f.kind == "pneumothorax":
            edge = cx + (0.16 - 0.09 * s) * (-1 if f.side == "right" else 1)
            outer = (xx < edge) if f.side == "right" else (xx > edge)
            img[mask & outer & (yy < 0.55)] = 0.02
        else:
            img[((xx - cx) ** 2 + (yy - zy) ** 2) <= 0.04 ** 2] = 0.95
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def chexpert_labels(findings: list[Finding]) -> dict[str, float | None]:
    labels: dict[str, float | None] = {name: None for name in CHEXPERT}
    for f in findings:
        for name in _CHEXPERT_OF[f.kind]:
            labels[name] = 1.0
    if not findings:
        labels["No Finding"] = 1.0
    return labels


def make_record(index: int, split: str, size: int, rng: np.random.Generator, image_dir: Path) -> dict:
    findings = draw_findings(rng)
    view = VIEWS[rng.integers(2)]
    indication = INDICATIONS[rng.integers(len(INDICATIONS))]
    rel = f"images/{split}/{index:06d}.png"
    buffer = io.BytesIO()
    Image.fromarray(render(findings, size, view, rng), mode="L").save(buffer, format="PNG")
    _write_atomically(image_dir / f"{index:06d}.png", buffer.getvalue())
    text = write_findings(findings)
    return {
        "id": f"synth-{split}-{index:06d}",
        "image": rel,
        "generate_method": "rule-based",
        "reason": indication,
        "impression": "No acute cardiopulmonary process." if not findings else "Abnormal chest radiograph.",
        "indication": indication,
        "history": "",
        "view": view,
        "orientation": "frontal",
        "chexpert_labels": chexpert_labels(findings),
        "findings_struct": [asdict(f) for f in findings],
        "conversations": [{"from": "human", "value": findings_prompt(indication)}, {"from": "gpt", "value": text}],
    }




def generate(root: Path, n_train: int, n_val: int, n_test: int, image_size: int, seed: int) -> Path:
    """Write the set under `root` unless the same set is already there; return the root.

    A `meta.json` written last marks a complete set, so an interrupted generation starts over.
    """
    root = Path(root).resolve()
    meta = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "image_size": image_size, "seed": seed,
            "grammar": 2}
    meta_path = root / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return root
    meta_path.unlink(missing_ok=True)
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        rng = np.random.default_rng([seed, list(SPLIT_FILES).index(split)])
        image_dir = root / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        records = [make_record(i, split, image_size, rng, image_dir) for i in range(count)]
        _write_atomically(root / SPLIT_FILES[split], "".join(json.dumps(r) + "\n" for r in records).encode())
    _write_atomically(meta_path, json.dumps(meta).encode())
    return root


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the whole file or none; a temporary name of this process's own lets several
    processes generate the same set at once."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
