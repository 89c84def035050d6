from rich.console import Console

from radlab.evaluation.run import print_summary


def test_the_summary_shows_clinical_scores_side_by_side_with_intervals_and_skips():
    console = Console(record=True, width=160)
    trained = {"text/rouge_l_f1": 41.0, "clinical/radgraph_f1": 30.5, "clinical/radgraph_f1_ci_low": 28.0,
               "clinical/radgraph_f1_ci_high": 33.25, "clinical/chexbert_f1_micro_5": 57.4}
    untrained = {"text/rouge_l_f1": 3.0, "clinical/radgraph_f1": 1.5, "clinical/radgraph_f1_ci_low": 0.5,
                 "clinical/radgraph_f1_ci_high": 2.5}
    print_summary(console, {"trained": trained, "untrained": untrained}, {"bertscore": "no encoder"})
    text = console.export_text()
    lines = text.splitlines()
    radgraph = next(line for line in lines if "clinical/radgraph_f1" in line)
    assert "30.500 [28.00, 33.25]" in radgraph and "1.500 [0.50, 2.50]" in radgraph
    chexbert = next(line for line in lines if "clinical/chexbert_f1_micro_5" in line)
    assert "57.400" in chexbert and "-" in chexbert.split("57.400")[1]
    assert not any("bertscore_f1" in line for line in lines)
    assert "skipped bertscore: no encoder" in text
