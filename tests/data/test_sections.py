from radlab.data.sections import canonical_heading, extract_sections

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDNGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. LEFT LUNG: clear.

 IMPRESSIONS:

 No acute cardiopulmonary process.
"""


def test_mimic_headings_variants_and_typos():
    sections = extract_sections(MIMIC_REPORT)
    assert sections == {
        "examination": "CHEST (PA AND LAT)",
        "indication": "___F with new onset ascites // eval for infection",
        "technique": "Chest PA and lateral",
        "comparison": "None.",
        "findings": "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular "
                    "opacities that most likely represent nipple shadows. LEFT LUNG: clear.",
        "impression": "No acute cardiopulmonary process.",
    }


def test_headings_map_to_sections_and_unknown_ones_do_not():
    assert canonical_heading("REASON FOR EXAM") == "indication"
    assert canonical_heading("clinical  history") == "history"
    assert canonical_heading("IMPRESSON") == "impression"
    assert canonical_heading("CONCLUSION") == "impression"
    assert canonical_heading("LEFT LUNG") is None


def test_report_without_findings_and_repeated_sections():
    assert "findings" not in extract_sections("INDICATION: cough\nIMPRESSION: Normal chest.")
    twice = extract_sections("FINDINGS: Heart normal.\nWET READ: ___ ok\nFINDINGS: Lungs clear.")
    assert twice["findings"] == "Heart normal. Lungs clear."
    assert twice["wet_read"] == "___ ok"
    assert extract_sections("no headings at all") == {}
