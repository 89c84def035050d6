"""The report review page: one self-contained HTML file per evaluation (eval/review.html), which
MLflow shows in its artifact viewer. Per report: the image, the reference, each system's findings
with the words that differ from the reference marked, and the judge's errors by type; the rows sort
by any column (open the page with #sort=<column> to start sorted)."""

from __future__ import annotations

import base64
import difflib
import html
import io

from radlab.evaluation.chexprompt import ERROR_TYPES, LETTERS
from radlab.evaluation.judge_client import Judgment
from radlab.formats.images import ImageError, load_image

THUMBNAIL = 160

_SORT = """
function sortBy(column, descending) {
  const body = document.querySelector("tbody");
  const rows = Array.from(body.rows);
  const key = row => { const v = row.dataset[column]; return v === "" ? -1 : Number(v); };
  rows.sort((a, b) => descending ? key(b) - key(a) : key(a) - key(b));
  rows.forEach(row => body.appendChild(row));
}
document.querySelectorAll("th[data-sort]").forEach(th => th.addEventListener("click", () => {
  th.dataset.descending = th.dataset.descending === "true" ? "false" : "true";
  sortBy(th.dataset.sort, th.dataset.descending === "true");
}));
const wanted = new URLSearchParams(location.hash.slice(1)).get("sort");
if (wanted) sortBy(wanted, true);
"""

_STYLE = """
body { font: 13px system-ui, sans-serif; margin: 12px; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 6px; vertical-align: top; text-align: left; }
th[data-sort] { cursor: pointer; text-decoration: underline dotted; }
mark { background: #ffd5d5; }
.errors { white-space: nowrap; font-size: 12px; }
img { width: 160px; height: auto; }
"""


def marked(reference: str, candidate: str) -> str:
    """The candidate as HTML, the words the reference does not have there in <mark>."""
    ref, cand = reference.split(), candidate.split()
    out = []
    for op, _, _, j1, j2 in difflib.SequenceMatcher(a=ref, b=cand, autojunk=False).get_opcodes():
        words = html.escape(" ".join(cand[j1:j2]))
        if words:
            out.append(words if op == "equal" else f"<mark>{words}</mark>")
    return " ".join(out) or "<em>(empty)</em>"


def thumbnail(path: str) -> str:
    """The image as a PNG data URL, THUMBNAIL px wide; an image that cannot be read says so."""
    try:
        image = load_image(path)  # a grayscale PIL image, DICOM included
    except ImageError as err:
        return f"<em>{html.escape(str(err))}</em>"
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.convert("L").save(buffer, format="PNG")
    return f'<img alt="{html.escape(path)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _errors(judgment: Judgment | None) -> tuple[str, str]:
    """(HTML of the judge's counts by type, the significant total for sorting, "" if not judged)."""
    if judgment is None:
        return "<em>not judged</em>", ""
    if not judgment.ok:
        return f"<em>judge failed: {html.escape((judgment.error or '').splitlines()[0][:120])}</em>", ""
    counts = judgment.counts
    lines = [f"{ERROR_TYPES[x]}: {counts.significant[x]} + {counts.insignificant[x]}" for x in LETTERS
             if counts.significant[x] or counts.insignificant[x]]
    total = sum(counts.significant[x] for x in LETTERS)
    return (f"<b>{total} significant</b><br>" + "<br>".join(lines)) if lines else "no errors", str(total)


def review_page(systems: dict[str, tuple[list[dict], list[Judgment]]], title: str) -> str:
    """The page for one or more systems judged on the same reports (by id): system name ->
    (predictions, judgments in the same order, or [] when not judged)."""
    names = list(systems)
    by_id = {name: {str(p["id"]): (p, j) for p, j in zip(preds, judged or [None] * len(preds), strict=True)}
             for name, (preds, judged) in systems.items()}
    first = systems[names[0]][0]
    header = "".join(f'<th>{html.escape(n)} findings</th><th data-sort="errors{i}">{html.escape(n)} errors</th>'
                     for i, n in enumerate(names))
    rows = []
    for prediction in first:
        report_id = str(prediction["id"])
        cells, sort_keys = [], []
        for i, name in enumerate(names):
            p, j = by_id[name].get(report_id, ({}, None))
            errors, total = _errors(j)
            text = marked(prediction["reference"], p["candidate"]) if "candidate" in p else \
                f"<em>{html.escape(p.get('error', 'no findings'))}</em>"
            cells.append(f"<td>{text}</td><td class=errors>{errors}</td>")
            sort_keys.append(f'data-errors{i}="{total}"')
        rows.append(f'<tr {" ".join(sort_keys)}><td>{html.escape(report_id)}<br>'
                    f'{thumbnail(prediction["image"]) if prediction.get("image") else ""}</td>'
                    f"<td>{html.escape(prediction['reference'])}</td>{''.join(cells)}</tr>")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h2>{html.escape(title)}</h2>"
            "<p>Words of a generation that differ from the reference are <mark>marked</mark>; errors are "
            "clinically significant + not. Click an errors header to sort.</p>"
            f"<table><thead><tr><th>report</th><th>reference</th>{header}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table><script>{_SORT}</script></body></html>")
