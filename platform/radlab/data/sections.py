"""Rule-based section extraction from free-text radiology reports (the "rule-based" text of the
LLaVA-Rad data): upper-case headings such as EXAMINATION, INDICATION, HISTORY, TECHNIQUE,
COMPARISON, FINDINGS and IMPRESSION, their variants (IMPRESSIONS, REASON FOR EXAM, CLINICAL
HISTORY...) and typos (FINDNGS, IMPRESSON) are recognised; de-identification tokens (`___` in
MIMIC-CXR, `XXXX` in IU X-ray) are kept as they are."""

from __future__ import annotations

import difflib
import re

# Canonical section -> the headings that open it, as they are written in the datasets.
HEADINGS = {
    "examination": ["EXAMINATION", "EXAM", "STUDY", "PROCEDURE", "TYPE OF EXAMINATION"],
    "indication": ["INDICATION", "INDICATIONS", "REASON FOR EXAM", "REASON FOR EXAMINATION", "REASON FOR STUDY",
                   "CLINICAL INDICATION", "CLINICAL INFORMATION"],
    "history": ["HISTORY", "CLINICAL HISTORY", "MEDICAL HISTORY", "MEDICAL CONDITION", "PATIENT HISTORY"],
    "technique": ["TECHNIQUE", "TECHNIQUES", "VIEWS", "PROCEDURE COMMENTS"],
    "comparison": ["COMPARISON", "COMPARISONS", "PRIOR", "PRIOR STUDIES", "COMPARISON STUDY"],
    "findings": ["FINDINGS", "FINDING", "FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION"],
    "impression": ["IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "SUMMARY", "OPINION"],
    "recommendation": ["RECOMMENDATION", "RECOMMENDATIONS", "RECOMMENDATION(S)", "FOLLOW UP"],
    "notification": ["NOTIFICATION", "NOTIFICATIONS", "COMMUNICATION"],
    "wet_read": ["WET READ", "PRELIMINARY READ"],
}
_CANONICAL = {variant: name for name, variants in HEADINGS.items() for variant in variants}
# A heading: at the start of a line (after spaces), 1-6 upper-case words, then a colon.
_HEADING = re.compile(r"^[ \t]*([A-Z][A-Z()/&\-]*(?:[ \t]+[A-Z()/&\-]+){0,5})[ \t]*:", re.MULTILINE)
_SPACES = re.compile(r"\s+")


def canonical_heading(heading: str) -> str | None:
    """The section a heading opens; close misspellings count (FINDNGS -> findings); None for a
    heading radlab does not know (its text then belongs to no section)."""
    key = _SPACES.sub(" ", heading.strip().upper())
    if key in _CANONICAL:
        return _CANONICAL[key]
    close = difflib.get_close_matches(key, _CANONICAL, n=1, cutoff=0.8)
    return _CANONICAL[close[0]] if close else None


def clean(text: str) -> str:
    """One line, single spaces; de-identification tokens untouched."""
    return _SPACES.sub(" ", text).strip()


def extract_sections(report: str) -> dict[str, str]:
    """The report's sections by canonical name (only those present, non-empty). Text before the
    first known heading (e.g. "FINAL REPORT") is dropped; an unknown heading ("LEFT LUNG:") stays
    inside the section it appears in; a section whose heading repeats is joined."""
    sections: dict[str, list[str]] = {}
    known = [(m, name) for m in _HEADING.finditer(report) if (name := canonical_heading(m.group(1)))]
    for (match, name), following in zip(known, [m for m, _ in known[1:]] + [None]):
        body = clean(report[match.end(): following.start() if following else len(report)])
        if body:
            sections.setdefault(name, []).append(body)
    return {name: " ".join(parts) for name, parts in sections.items()}
