"""Progress on the driver's console: one line per training stage, fed by what rank 0 reports,
counts of reports generated and judged, and the tables commands print.

The workers' own output stays in Ray's log files (`radlab run --verbose` brings it back), so the
console shows each stage once: a rich progress bar (step, loss, lr, samples/s, elapsed, remaining)
in a terminal, and a plain line every few seconds where output goes to a file or a job log.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

# (step, {metric: value}) of the stage's latest report, or None before the first one.
Poll = Callable[[], tuple[int, dict[str, float]] | None]


def print_table(console: Console, table: Table) -> None:
    """A table as wide as the terminal in one; where output goes to a file, a pipe or a job log
    (which rich would render 80 columns wide), as wide as the table needs, so that no metric name
    or number is cut short, nor its title wrapped."""
    if not console.is_terminal and table.title:
        table.min_width = max(table.min_width or 0, cell_len(str(table.title)))
    natural = console.measure(table, options=console.options.update_width(10_000)).maximum
    if console.is_terminal or natural <= console.width:
        console.print(table)
        return
    # Console.print caps a width at the console's own, so the table is laid out on a console of its
    # natural width and its plain text written as it is (no terminal: no styles to keep).
    wide = Console(file=io.StringIO(), width=natural, color_system=None)
    wide.print(table)
    console.out(wide.file.getvalue().rstrip("\n"), highlight=False)


def report_line(stage: str, step: int, total: int, metrics: dict[str, float]) -> str:
    rate = metrics.get("samples_per_s", metrics.get("pairs_per_s"))
    parts = [f"[{stage}] step {step}/{total}"]
    if "loss" in metrics:
        parts.append(f"loss {metrics['loss']:.4f}")
    if "lr" in metrics:
        parts.append(f"lr {metrics['lr']:.2e}")
    if rate is not None:
        parts.append(f"{rate:.0f} {'pairs' if 'pairs_per_s' in metrics else 'samples'}/s")
    return " ".join(parts)


@contextmanager
def stage_progress(console: Console, stage: str, total: int, poll: Poll, resumes: Callable[[], list[tuple[int, int]]],
                   failures: Callable[[], list[str]], every_s: float = 1.0, line_every_s: float = 15.0) -> Iterator[None]:
    """Show the stage's progress while the block runs (the block trains the stage), each failed
    worker group with its cause (`failures`), and each time it resumed from a checkpoint (`resumes`:
    the step and the workers of each); a last poll after it shows where the stage ended."""
    stop = threading.Event()
    interactive = console.is_terminal
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console, transient=False) if interactive else None
    task = progress.add_task(escape(f"[{stage}]"), total=total) if progress else None
    last = {"step": -1, "printed": 0.0, "resumes": 0, "failures": 0}

    def update() -> None:
        failed = failures()
        for count, cause in enumerate(failed[last["failures"]:], last["failures"] + 1):
            (progress.console if progress else console).print(
                f"[{stage}] worker group failed ({count}): {cause}", highlight=False, markup=False)
        last["failures"] = len(failed)
        resumed = resumes()
        for count, (at, workers) in enumerate(resumed[last["resumes"]:], last["resumes"] + 1):
            (progress.console if progress else console).print(
                f"[{stage}] resuming at step {at}/{total} from its last checkpoint (resume {count}, "
                f"on {workers} worker{'s' if workers != 1 else ''})", highlight=False, markup=False)
        last["resumes"] = len(resumed)
        latest = poll()
        if latest is None or latest[0] == last["step"]:
            return
        step, metrics = latest
        last["step"] = step
        if progress is not None:
            progress.update(task, completed=step, description=escape(report_line(stage, step, total, metrics)))
        elif time.monotonic() - last["printed"] >= line_every_s or step >= total:
            console.print(report_line(stage, step, total, metrics), highlight=False, markup=False)
            last["printed"] = time.monotonic()

    def safe_update() -> None:
        try:
            update()
        except Exception as err:  # the tracking store briefly unreachable: the next poll retries
            console.log(f"progress of {stage} not readable now ({type(err).__name__})")

    def watch() -> None:
        while not stop.wait(every_s):
            safe_update()

    thread = threading.Thread(target=watch, daemon=True)
    if progress is not None:
        progress.start()
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        safe_update()
        if progress is not None:
            progress.stop()


@contextmanager
def counted(console: Console, label: str, total: int, line_every_s: float = 15.0) -> Iterator[Callable[..., None]]:
    """Count `total` things done while the block runs: a rich bar in a terminal, elsewhere a plain
    line every `line_every_s` and one at the end. Yields `advance(n, note="")`; the note (failures,
    cost so far) is shown beside the count."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console) if console.is_terminal else None
    task = progress.add_task(escape(label), total=total) if progress else None
    state = {"done": 0, "note": "", "printed": time.monotonic()}
    lock = threading.Lock()

    def line() -> str:
        return f"{label}: {state['done']}/{total}" + (f", {state['note']}" if state["note"] else "")

    def advance(n: int = 1, note: str = "") -> None:
        with lock:
            state["done"] += n
            state["note"] = note or state["note"]
            if progress is not None:
                progress.update(task, advance=n, description=escape(f"{label} {state['note']}".strip()))
            elif time.monotonic() - state["printed"] >= line_every_s and state["done"] < total:
                console.print(line(), highlight=False, markup=False)
                state["printed"] = time.monotonic()

    if progress is not None:
        progress.start()
    try:
        yield advance
    finally:
        if progress is not None:
            progress.stop()
        else:
            console.print(line(), highlight=False, markup=False)
