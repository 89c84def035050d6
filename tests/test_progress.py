"""The driver's console: progress lines, failed worker groups and resumes, each once; the tables."""

import io
import time

from rich.console import Console
from rich.table import Table

from radlab.progress import print_table, report_line, stage_progress


def test_a_stage_shows_its_failures_and_resumes_once_and_where_it_ended():
    out = io.StringIO()
    console = Console(file=out, width=200)  # not a terminal: plain lines, as in a job log
    state = {"report": None, "resumes": [], "failures": []}
    with stage_progress(console, "stage1", 40, lambda: state["report"], lambda: state["resumes"],
                        lambda: state["failures"], every_s=0.01, line_every_s=0.0):
        state["report"] = (10, {"loss": 1.5, "lr": 1e-3, "samples_per_s": 90.0})
        state["failures"] = ["worker 1: ActorDiedError: the actor died"]
        state["resumes"] = [(10, 2)]
        for _ in range(100):
            if "resuming" in out.getvalue():
                break
            time.sleep(0.01)
        state["report"] = (40, {"loss": 0.5, "lr": 0.0, "samples_per_s": 100.0})
    lines = out.getvalue().splitlines()
    assert lines.count("[stage1] worker group failed (1): worker 1: ActorDiedError: the actor died") == 1
    assert lines.count("[stage1] resuming at step 10/40 from its last checkpoint (resume 1, on 2 workers)") == 1
    assert lines[-1] == report_line("stage1", 40, 40, {"loss": 0.5, "lr": 0.0, "samples_per_s": 100.0})
    assert lines[-1] == "[stage1] step 40/40 loss 0.5000 lr 0.00e+00 100 samples/s"


def test_counts_of_reports_end_with_one_line_saying_where_they_stand():
    from radlab.progress import counted

    out = io.StringIO()
    console = Console(file=out, width=200)
    with counted(console, "judging", 5, line_every_s=3600) as advance:
        for k in range(5):
            advance(1, f"{k // 4} failed, $0.00")
    assert out.getvalue().splitlines() == ["judging: 5/5, 1 failed, $0.00"]


def test_a_table_in_a_log_keeps_every_name_and_number_whole():
    """Rendered for a file or a pipe, rich would cut a table to 80 columns; radlab's tables there are
    as wide as they need. On a terminal they keep to its width."""
    from radlab.evaluation.reporting import print_summary

    columns = {"trained": {"chexprompt/zero_significant_share": 0.825, "chexprompt/zero_significant_share_ci_low": 0.77,
                           "chexprompt/zero_significant_share_ci_high": 0.88,
                           "grounding/blank_image_identical_share": 0.015},
               "untrained": {"chexprompt/zero_significant_share": 0.26, "chexprompt/zero_significant_share_ci_low": 0.2,
                             "chexprompt/zero_significant_share_ci_high": 0.33}}
    log = Console(file=io.StringIO(), width=80)
    print_summary(log, columns, {})
    lines = log.file.getvalue().splitlines()
    assert any("chexprompt/zero_significant_share" in line and "0.825 [0.77, 0.88]" in line
               and "0.260 [0.20, 0.33]" in line for line in lines)
    assert any("grounding/blank_image_identical_share" in line for line in lines) and max(map(len, lines)) > 80
    terminal = Console(file=io.StringIO(), width=80, force_terminal=True, record=True)
    table = Table("metric", "value")
    table.add_row("chexprompt/zero_significant_share/" * 3, "0.825")
    print_table(terminal, table)
    shown = terminal.export_text().splitlines()
    assert max(map(len, shown)) <= 80 and "chexprompt/zero_significant_share/" * 3 not in "".join(shown)


def test_a_table_title_in_a_log_stays_on_one_line_above_narrow_rows():
    title = "trained - untrained, paired on the same studies (p: paired permutation test)" + " and more" * 4
    table = Table("metric", "p", title=title)
    table.add_row("rouge_l_f1", "0.002")
    log = Console(file=io.StringIO(), width=80)
    print_table(log, table)
    assert title in log.file.getvalue().splitlines()[0]
