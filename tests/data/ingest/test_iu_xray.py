import json

from radlab.data.ingest import iu_xray
from radlab.data.ingest.common import ingest

from tests.data.ingest.layouts import iu_xray as layout


def test_iu_xray_xml_reports_images_and_patient_level_splits(tmp_path):
    images, reports = layout(tmp_path / "iu")
    summary = ingest(iu_xray.read(images, reports), tmp_path / "out", "iu-xray")
    assert sum(summary["records"].values()) == 3  # CXR1 x2, CXR3 x1
    assert summary["problems"] == {"no findings section": 1, "missing image": 1, "unreadable XML": 1}
    records = [json.loads(line) for split in ("train", "val", "test")
               for line in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in records}
    assert by_id["CXR3_1_IM-0003-1001"]["conversations"][1]["value"] == "Heart size normal. No XXXX."
    assert by_id["CXR1_1_IM-0001-1001"]["indication"] == "XXXX-year-old male, chest pain."
    # Both images of a report share its split.
    assert by_id["CXR1_1_IM-0001-1001"]["split"] == by_id["CXR1_1_IM-0001-2001"]["split"]
