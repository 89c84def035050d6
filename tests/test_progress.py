"""The driver's console during a stage: progress lines, failed worker groups and resumes, each once."""

import io
import time

from rich.console import Console

from radlab.progress import report_line, stage_progress


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
