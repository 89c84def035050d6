"""LLM structuring against a real loopback OpenAI-compatible server: a fake of GPT-4 (which cannot
run here) that restates comparisons as current status and answers garbage when told to."""

import json
from collections import Counter

import pytest
from fastapi import FastAPI, Request

from radlab.config import JudgeConfig
from radlab.data.dataset import DataError, load_examples
from radlab.data.ingest import generic
from radlab.data.ingest.common import ingest
from radlab.data.structure import LLM_METHOD, parse_structured, structure_folder
from radlab.evaluation.reference_judge import serve_in_thread
from radlab.llm import AnswerUnusable, OffsiteError

from tests.data.ingest.layouts import image, write_csv


def gpt4_fake() -> tuple[FastAPI, Counter]:
    app, seen = FastAPI(), Counter()

    @app.post("/v1/chat/completions")
    async def complete(request: Request):
        report = (await request.json())["messages"][-1]["content"]
        seen[report] += 1
        sections = dict(line.split(": ", 1) for line in report.splitlines() if ": " in line)
        if "garbage" in report:
            content = "Sorry, I cannot help with that."
        elif "CheXpert labels" in report:
            labels = report.rsplit("labels: ", 1)[1].rstrip(".")
            content = json.dumps({"findings": f"There is {labels.lower()}.", "indication": "", "impression": "",
                                  "examination": ""})
        else:
            findings = sections["FINDINGS"].replace("Unchanged ", "").replace(" compared to the prior study", "")
            content = "```json\n" + json.dumps({"examination": "Chest radiograph",
                                                "indication": sections.get("INDICATION", ""),
                                                "findings": findings[0].upper() + findings[1:],
                                                "impression": sections.get("IMPRESSION", "")}) + "\n```"
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "gpt-4",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 200, "completion_tokens": 50, "total_tokens": 250}}

    return app, seen


MAPPING = "columns: {id: id, image: image, findings: findings, indication: indication, split: split, patient: patient}\n"


def dataset(tmp_path):
    rows = []
    for i, (findings, split, patient) in enumerate([
        ("Unchanged small left effusion compared to the prior study.", "train", "p0"),
        ("Unchanged small left effusion compared to the prior study.", "train", "p0"),  # same report, second image
        ("Lungs clear. garbage", "train", "p1"),
        ("Heart normal.", "val", "p2"),
        ("Unchanged cardiomegaly.", "test", "p3"),
    ]):
        image(tmp_path / "img" / f"{i}.png", "PNG")
        rows.append({"id": f"r{i}", "image": f"{i}.png", "findings": findings, "indication": "Dyspnea.", "split": split,
                     "patient": patient})
    write_csv(tmp_path / "t.csv", rows)
    (tmp_path / "map.yaml").write_text(MAPPING)
    out = tmp_path / "ds"
    ingest(generic.read(tmp_path / "img", tmp_path / "t.csv", generic.load_mapping(tmp_path / "map.yaml"), ["PA"]),
           out, "t")
    return out


def config(tmp_path, url, **fields) -> JudgeConfig:
    return JudgeConfig(endpoint="compatible", base_url=url, max_retries=1, retry_base_s=0.01,
                       cache=tmp_path / "cache.sqlite", requests_per_minute=60000, cost_per_1k_input=0.01, **fields)


def test_structuring_adds_llm_records_caches_and_counts_failures(tmp_path):
    folder = dataset(tmp_path)
    test_before = (folder / "test.jsonl").read_bytes()
    app, seen = gpt4_fake()
    with serve_in_thread(app) as url:
        summary = structure_folder(folder, config(tmp_path, url))
        assert (summary.reports, summary.structured, summary.failed) == (3, 2, 1)  # one request per report
        assert summary.usage["requests"] == 4 and summary.usage["retries"] == 1  # garbage: asked twice, then failed
        assert seen["INDICATION: Dyspnea.\nFINDINGS: Lungs clear. garbage"] == 2
        assert summary.failures[0].startswith("train: unparseable answer: no JSON object")
        again = structure_folder(folder, config(tmp_path, url))
    assert (again.cached, again.usage["requests"]) == (2, 2)  # only the failed one is asked again
    assert (folder / "test.jsonl").read_bytes() == test_before  # the test split stays rule-based
    train = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert [r["generate_method"] for r in train] == ["rule-based"] * 3 + [LLM_METHOD] * 2  # no duplicates on rerun
    llm = train[3]
    assert llm["id"] == "r0#llm" and llm["conversations"][1]["value"] == "Small left effusion."
    assert llm["structured_by"] == "gpt-4" and "Dyspnea." in llm["conversations"][0]["value"]
    # Experiments choose the text: llm only, rule only.
    assert len(load_examples(folder / "train.jsonl", tmp_path / "img", ["PA"], [LLM_METHOD])) == 2
    assert len(load_examples(folder / "train.jsonl", tmp_path / "img", ["PA"], ["rule-based"])) == 3
    assert summary.pairs[0] == ("Unchanged small left effusion compared to the prior study.", "Small left effusion.")
    # A pair per image, with its patient: the quality report's intervals draw the study's two together.
    assert len(summary.pairs) == 3 and summary.patients == ["p0", "p0", "p2"]


def test_a_partial_or_failed_pass_loses_no_earlier_llm_record(tmp_path):
    """Structuring again with --limit keeps the LLM records past the limit; a pass where every
    request fails (the server gone) is an error and leaves the manifest as it was."""
    folder = dataset(tmp_path)
    app, _ = gpt4_fake()
    with serve_in_thread(app) as url:
        structure_folder(folder, config(tmp_path, url))
        before = (folder / "train.jsonl").read_bytes()
        first_only = structure_folder(folder, config(tmp_path, url), splits=("train",), limit=1)
    assert (first_only.structured, first_only.kept) == (1, 1)  # r0 again, r1's record from the first pass
    assert (folder / "train.jsonl").read_bytes() == before
    gone = config(tmp_path, url)  # the server has stopped: every request fails to connect
    with pytest.raises(DataError, match=r"none of the 2 reports sent was structured .*train.jsonl is left as it was"):
        structure_folder(folder, gone.model_copy(update={"cache": tmp_path / "other.sqlite"}), splits=("train",))
    assert (folder / "train.jsonl").read_bytes() == before


def test_findings_synthesized_from_labels_for_a_labels_only_dataset(tmp_path):
    image(tmp_path / "img" / "a.png", "PNG")
    write_csv(tmp_path / "t.csv", [{"id": "a", "image": "a.png", "split": "train", "Edema": "1", "Cardiomegaly": "1"}])
    (tmp_path / "map.yaml").write_text("columns: {id: id, image: image, split: split}\nlabels: [Edema, Cardiomegaly]\n")
    folder = tmp_path / "ds"
    ingest(generic.read(tmp_path / "img", tmp_path / "t.csv", generic.load_mapping(tmp_path / "map.yaml"), ["PA"]),
           folder, "t")
    app, _ = gpt4_fake()
    with serve_in_thread(app) as url:
        skipped = structure_folder(folder, config(tmp_path, url))
        made = structure_folder(folder, config(tmp_path, url), synthesize=True)
    assert skipped.skipped == 1 and skipped.usage["requests"] == 0
    assert made.structured == 1
    record = json.loads((folder / "train.jsonl").read_text().splitlines()[-1])
    assert record["conversations"][1]["value"] == "There is cardiomegaly, edema."


def test_offsite_endpoint_needs_consent_and_test_split_is_refused(tmp_path):
    folder = dataset(tmp_path)
    with pytest.raises(ValueError, match="off this machine"):
        config(tmp_path, "https://llm.example.org/v1")  # refused as soon as it is configured
    offsite = config(tmp_path, "http://127.0.0.1:1/v1").model_copy(update={"base_url": "https://llm.example.org/v1"})
    with pytest.raises(OffsiteError, match="--opt-in-offsite"):  # and by the client, whatever built the config
        structure_folder(folder, offsite)
    with pytest.raises(ValueError, match="test split stays rule-based"):
        structure_folder(folder, config(tmp_path, "http://127.0.0.1:1/v1"), splits=("train", "test"))


def test_answer_forms():
    bare = parse_structured('{"findings": "Clear lungs.", "impression": "Normal."}')
    assert bare == {"examination": "", "indication": "", "findings": "Clear lungs.", "impression": "Normal."}
    assert parse_structured('Here it is:\n```json\n{"findings": "X."}\n```\nDone.')["findings"] == "X."
    for bad, reason in [("no json", "no JSON object"), ('{"findings": ""}', "empty findings"),
                        ('{"findings": 3}', "string fields"), ('{"findings": "a",}', "not valid JSON")]:
        with pytest.raises(AnswerUnusable, match=reason):
            parse_structured(bad)
