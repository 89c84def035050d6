from rich.console import Console

from radlab.evaluation.chexprompt import ERROR_TYPES
from radlab.evaluation.reporting import error_chart, print_summary


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


def test_one_error_chart_holds_both_models_on_one_scale_with_intervals():
    def system(level):
        out = {}
        for name in ERROR_TYPES.values():
            for kind in ("significant", "insignificant"):
                key = f"chexprompt/{kind}/{name}"
                out |= {key: level, f"{key}_ci_low": level - 0.1, f"{key}_ci_high": level + 0.2}
        return out

    figure = error_chart({"trained": system(0.2), "untrained": system(1.0)})
    significant, insignificant = figure.axes
    assert significant.get_shared_y_axes().joined(significant, insignificant)  # one scale
    bars = significant.patches
    assert len(bars) == 2 * len(ERROR_TYPES)
    assert sorted({round(b.get_height(), 3) for b in bars}) == [0.2, 1.0]
    assert [t.get_text() for t in significant.get_legend().get_texts()] == ["trained", "untrained"]
    bar_sets = [c for c in significant.containers if hasattr(c, "errorbar")]
    assert len(bar_sets) == 2 and all(c.errorbar is not None for c in bar_sets)  # each bar with its interval
