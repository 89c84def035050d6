import json

import numpy as np

from radlab.data.synthetic import Finding, draw_findings, generate, parse_findings, render, write_findings


def test_grammar_parses_back_to_the_exact_labels():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        findings = draw_findings(rng)
        parsed = parse_findings(write_findings(findings))
        assert parsed.findings == findings
        assert parsed.unparsed == []


def test_parser_reports_sentences_outside_the_grammar():
    text = "There is a large right pneumothorax. Compared to prior, new opacity. No pleural effusion."
    parsed = parse_findings(text)
    assert parsed.findings == [Finding("pneumothorax", "right", None, "large")]
    assert parsed.unparsed == ["Compared to prior, new opacity."]
    assert parsed.negated == ["effusion"]


def test_findings_change_the_image_where_they_are():
    rng = np.random.default_rng(1)
    normal = render([], 64, "PA", np.random.default_rng(1)).astype(int)
    sick = render([Finding("effusion", "left", None, "large")], 64, "PA", rng).astype(int)
    diff = np.abs(sick - normal) > 60
    ys, xs = np.nonzero(diff)
    # Radiological convention: the patient's left is on the image's right, effusions at the base.
    assert diff.sum() > 20 and xs.mean() > 32 and ys.mean() > 40


def test_generate_writes_splits_once(tmp_path):
    root = generate(tmp_path / "s", 10, 2, 3, 64, 0)
    lines = (root / "train.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    assert len(lines) == 10 and (root / record["image"]).is_file()
    assert record["conversations"][0]["value"].startswith("<image>\n")
    assert parse_findings(record["conversations"][1]["value"]).findings == [
        Finding(**f) for f in record["findings_struct"]]
    stamp = (root / "train.jsonl").stat().st_mtime_ns
    generate(tmp_path / "s", 10, 2, 3, 64, 0)
    assert (root / "train.jsonl").stat().st_mtime_ns == stamp  # cached
    generate(tmp_path / "s", 12, 2, 3, 64, 0)
    assert len((root / "train.jsonl").read_text().splitlines()) == 12  # a different set is regenerated


def test_many_processes_may_generate_the_same_set_at_once(tmp_path):
    import multiprocessing

    from radlab.data.synthetic import generate

    root = tmp_path / "set"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        roots = pool.starmap(generate, [(root, 40, 4, 4, 32, 0)] * 4)
    assert roots == [root.resolve()] * 4
    assert not list(root.rglob("*.tmp"))
    lines = (root / "train.jsonl").read_text().splitlines()
    assert len(lines) == 40 and len(list((root / "images" / "train").glob("*.png"))) == 40
