import json

from radlab.data.ingest.common import PROGRESS, Study, ingest, make_record, patient_split


def studies(keys, built, fail_at=None):
    for key in keys:
        def build(key=key):
            if key == fail_at:
                raise KeyboardInterrupt  # the ingest is stopped here
            built.append(key)
            study = Study(key)
            split = "test" if key == "s3" else "train"
            study.records.append(make_record(dataset="x", id=key, image=f"{key}.png", split=split, view="PA",
                                             sections={"findings": f"findings {key}"}, patient="p1", study=key))
            return study
        yield key, build


def test_an_interrupted_ingest_resumes_without_redoing_studies(tmp_path):
    built: list[str] = []
    keys = ["s1", "s2", "s3", "s4"]
    try:
        ingest(studies(keys, built, fail_at="s3"), tmp_path, "x")
    except KeyboardInterrupt:
        pass
    assert built == ["s1", "s2"] and (tmp_path / PROGRESS).is_file()
    assert not (tmp_path / "train.jsonl").exists()  # no manifest from a half-done ingest
    (tmp_path / PROGRESS).open("a").write('{"key": "s9", "rec')  # a line cut by the stop
    summary = ingest(studies(keys, built), tmp_path, "x")
    assert built == ["s1", "s2", "s3", "s4"]
    assert summary["resumed_studies"] == 2 and summary["records"] == {"train": 3, "val": 0, "test": 1}
    # Patient p1 has studies in train and test: reported, not hidden.
    assert summary["problems"] == {"patient in several splits": 1}
    assert not (tmp_path / PROGRESS).exists()
    assert [json.loads(line)["id"] for line in (tmp_path / "train.jsonl").read_text().splitlines()] == ["s1", "s2", "s4"]


def test_patient_split_is_stable_and_near_the_ratios():
    splits = [patient_split(f"patient{i}") for i in range(2000)]
    assert splits == [patient_split(f"patient{i}") for i in range(2000)]
    assert 0.75 < splits.count("train") / 2000 < 0.85 and 0.07 < splits.count("test") / 2000 < 0.13
