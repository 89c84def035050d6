"""LLM report structuring, the data engineering step of the LLaVA-Rad study: an LLM reads each
report's rule-extracted sections and returns examination, indication, findings and impression as
JSON, keeping only what is observable on the current image (comparisons restated as current
status; communications, recommendations and references to other studies dropped), in English, and
can write findings from the labels of a report that has none.

Structured records join the rule-based ones in the same manifest with `generate_method: gpt4` (the
name the released annotations use for LLM text), so `data.mixture[].text` picks rule, LLM or both;
the test split is never structured, as in the paper. Requests go through `radlab.llm` (concurrency,
rate limit, retries, the answer cache that makes an interrupted pass resume for free, cost
accounting, the off-site guard)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from radlab.config import JudgeConfig
from radlab.data.dataset import METHODS, DataError, read_jsonl
from radlab.formats.prompts import SPLIT_FILES, findings_prompt
from radlab.llm import AnswerUnusable, LLMClient, Request

PROMPT_VERSION = "structure-v1"
LLM_METHOD = METHODS["llm"]
FIELDS = ("examination", "indication", "findings", "impression")
SYSTEM = (
    "You rewrite chest X-ray reports for training a model that sees only the current image. Return "
    "one JSON object with the keys examination, indication, findings and impression (strings; empty "
    "when the report has nothing for it) and nothing else. Rules: keep only statements about what "
    "is visible on this image; restate comparisons with prior studies as the current status "
    "('unchanged small left effusion' becomes 'small left pleural effusion'); drop communications, "
    "recommendations, clinician names, dates and references to other studies; keep de-identification "
    "tokens such as ___ or XXXX as they are; write in English, translating a report in another "
    "language; do not invent findings."
)
SYNTHESIZE = ("The report has no findings section: write the findings a radiologist would report "
              "for an image with exactly these CheXpert labels: {labels}.")
_JSON = re.compile(r"\{.*\}", re.DOTALL)


def parse_structured(text: str | None) -> dict[str, str]:
    """The JSON object of an answer (bare or in a code fence, with words around it); its findings
    must be a non-empty string."""
    match = _JSON.search(text or "")
    if not match:
        raise AnswerUnusable("no JSON object in the answer")
    try:
        value = json.loads(match.group(0))
    except json.JSONDecodeError as err:
        raise AnswerUnusable(f"not valid JSON ({err.msg})") from None
    if not isinstance(value, dict) or not all(isinstance(value.get(k, ""), str) for k in FIELDS):
        raise AnswerUnusable(f"expected an object with string fields {', '.join(FIELDS)}")
    if not value.get("findings", "").strip():
        raise AnswerUnusable("empty findings")
    return {k: value.get(k, "").strip() for k in FIELDS}


def report_text(record: dict) -> str:
    """The rule-extracted sections written back as a report, the text the LLM restructures."""
    findings = next(t["value"] for t in record["conversations"] if t["from"] == "gpt")
    parts = [("INDICATION", record.get("indication") or record.get("reason")), ("HISTORY", record.get("history")),
             ("COMPARISON", record.get("comparison")), ("FINDINGS", findings), ("IMPRESSION", record.get("impression"))]
    return "\n".join(f"{name}: {text}" for name, text in parts if text)


def request_for(record: dict, synthesize: bool) -> Request | None:
    text = report_text(record)
    if "FINDINGS:" not in text:
        labels = [name for name, value in (record.get("chexpert_labels") or {}).items() if value == 1.0]
        if not (synthesize and labels):
            return None
        text += "\n" + SYNTHESIZE.format(labels=", ".join(labels))
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    return Request([PROMPT_VERSION, text], messages)


@dataclass
class StructureSummary:
    reports: int = 0
    structured: int = 0
    cached: int = 0
    failed: int = 0
    skipped: int = 0
    kept: int = 0  # LLM records of an earlier pass kept for reports this pass did not structure
    failures: list[str] = field(default_factory=list)
    usage: dict = field(default_factory=dict)
    cost: float = 0.0
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (rule findings, LLM findings)
    patients: list[str] = field(default_factory=list)  # each pair's patient (its record's id where none is known)


def structure_folder(folder: Path, config: JudgeConfig, splits: tuple[str, ...] = ("train", "val"),
                     synthesize: bool = False, limit: int | None = None, progress=None) -> StructureSummary:
    """Add LLM-structured records to the split manifests of an ingested folder, in place and
    atomically. One request per distinct report (the images of a study share it). A report
    structured again replaces its earlier LLM record; one this pass did not structure (failed,
    skipped, or past `limit`) keeps it. A split where every report sent failed is an error and its
    manifest is left as it was."""
    if "test" in splits:
        raise DataError("the test split stays rule-based (as in the paper): structure train and val only")
    client = LLMClient(config, consent_field="--opt-in-offsite")
    summary = StructureSummary()
    for split in splits:
        path = folder / SPLIT_FILES[split]
        records = read_jsonl(path)
        rule = [r for r in records if r.get("generate_method") != LLM_METHOD]
        earlier = {r["id"]: r for r in records if r.get("generate_method") == LLM_METHOD}
        asked = rule[:limit]
        texts: dict[str, Request | None] = {}
        for record in asked:
            texts.setdefault(report_text(record), request_for(record, synthesize))
        keys = list(texts)
        answers = client.ask([texts[k] for k in keys], parse_structured, progress)
        by_text = dict(zip(keys, answers))
        summary.reports += len(keys)
        failures = [(key, answer) for key, answer in by_text.items() if answer is not None and not answer.ok]
        if failures and not any(answer is not None and answer.ok for answer in answers):
            key, answer = failures[0]
            excerpt = " ".join(key[:60].split())
            raise DataError(f"{path}: none of the {len(failures)} reports sent was structured ({answer.error}; report: "
                            f"{excerpt}...); {path.name} is left as it was: check --base-url and --model")
        for key, answer in by_text.items():
            if answer is None:
                summary.skipped += 1
            elif answer.ok:
                summary.structured += 1
                summary.cached += answer.cached
            else:
                summary.failed += 1
                if len(summary.failures) < 5:
                    summary.failures.append(f"{split}: {answer.error} (report: {key[:80]}...)")
        structured = []
        for k, record in enumerate(rule):
            answer = by_text[report_text(record)] if k < len(asked) else None
            if answer is not None and answer.ok:
                summary.pairs.append((_findings(record), answer.value["findings"]))
                summary.patients.append(str(record.get("patient_id") or record["id"]))
                structured.append(_llm_record(record, answer.value, config.model))
            elif f"{record['id']}#llm" in earlier:  # not structured this time: the earlier pass's record stays
                structured.append(earlier[f"{record['id']}#llm"])
                summary.kept += 1
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rule + structured), encoding="utf-8")
        tmp.replace(path)
    summary.usage, summary.cost = dict(client.usage), client.cost
    return summary


def _findings(record: dict) -> str:
    return next(t["value"] for t in record["conversations"] if t["from"] == "gpt")


def _llm_record(record: dict, value: dict[str, str], model: str) -> dict:
    indication = value["indication"]
    return {**record, "id": f"{record['id']}#llm", "generate_method": LLM_METHOD, "structured_by": model,
            "reason": indication, "indication": indication, "impression": value["impression"],
            "examination": value["examination"],
            "conversations": [{"from": "human", "value": findings_prompt(indication)},
                              {"from": "gpt", "value": value["findings"]}]}
