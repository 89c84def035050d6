"""`radlab data`: the synthetic set, ingesting real datasets, their cards, LLM structuring and
image preprocessing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from radlab.cli.common import console, err_console, or_exit
from radlab.progress import print_table

data_app = typer.Typer(no_args_is_help=True, help="Datasets: synthetic, ingest, stats, structure, preprocess.")
ingest_app = typer.Typer(no_args_is_help=True, help="Turn a downloaded dataset into radlab manifests.")
data_app.add_typer(ingest_app, name="ingest")

Out = Annotated[Path, typer.Option(help="folder for train/val/test.jsonl and summary.json")]
Views = Annotated[list[str], typer.Option("--views", help="views kept (repeat the option)")]
FRONTAL = ["AP", "PA"]


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console)


@data_app.command("synth")
def synth(out: Path = Path("data/synthetic"), n_train: int = 3000, n_val: int = 100, n_test: int = 200,
          image_size: int = 64, seed: int = 0) -> None:
    """Write the synthetic chest X-ray set (images, JSONL manifests per split)."""
    from radlab.data.synthetic import generate

    with console.status("generating"):
        root = generate(out, n_train, n_val, n_test, image_size, seed)
    console.print(f"[green]ok[/] {root}: train {n_train}, val {n_val}, test {n_test} at {image_size}px")


def _ingest(studies, out: Path, dataset: str, image_root: Path) -> None:
    from radlab.data.ingest.common import ingest

    studies = or_exit(list, studies)  # the readers check their inputs when first iterated
    with progress_bar() as bar:
        task = bar.add_task(f"ingest {dataset}", total=len(studies))
        summary = or_exit(ingest, iter(studies), out, dataset, lambda n: bar.advance(task, n))
    _print_summary(summary)
    console.print(f"[green]ok[/] manifests in {out}; in an experiment: data.mixture: [{{name: {dataset}, "
                  f"manifest: {out}/train.jsonl}}], data.eval_manifest: {out}/test.jsonl, data.image_root: {image_root}")


def _print_summary(summary: dict) -> None:
    console.print(f"{summary['dataset']}: {summary['studies']} studies ({summary.get('resumed_studies', 0)} from an "
                  f"interrupted ingest), records {summary['records']}, left out by choice {summary['filtered']}")
    if summary["problems"]:
        table = Table("problem", "count", "first examples", title="problems (nothing was dropped silently)")
        for kind, count in summary["problems"].items():
            table.add_row(kind, str(count), "\n".join(summary["problem_examples"].get(kind, [])))
        print_table(console, table)


@ingest_app.command("mimic-cxr")
def ingest_mimic(root: Annotated[Path, typer.Option(help="MIMIC-CXR-JPG: files/ and the CSVs")],
                 reports: Annotated[Path, typer.Option(help="MIMIC-CXR reports: files/p10/.../s<study>.txt")],
                 out: Out = Path("data/mimic"), views: Views = FRONTAL) -> None:
    """MIMIC-CXR-JPG with its reports: official splits, CheXpert labels, rule-extracted sections."""
    from radlab.data.ingest import mimic

    _ingest(mimic.read(root, reports, views), out, "mimic-cxr", root)


@ingest_app.command("llava-rad")
def ingest_llava_rad(annotations: Annotated[Path, typer.Option(help="the release's folder: chat_{train,dev,test}_"
                                                                   "MIMIC_CXR_all_gpt4extract_rulebased_v1.json")],
                     image_root: Annotated[Path, typer.Option(help="MIMIC-CXR-JPG's files/ folder (the release's "
                                                                   "image paths, without mimic/, start there)")],
                     out: Out = Path("data/llava_rad")) -> None:
    """LLaVA-Rad's released annotations, read as the release's loader reads them."""
    from radlab.data.ingest import llava_rad

    _ingest(llava_rad.read(annotations, image_root), out, "llava-rad", image_root)


@ingest_app.command("chexpert-plus")
def ingest_chexpert_plus(root: Annotated[Path, typer.Option(help="the folder the CSV's image paths start from")],
                         table: Annotated[Path, typer.Option(help="the report CSV (default: found under root)")] = None,
                         out: Out = Path("data/chexpert_plus"), views: Views = FRONTAL) -> None:
    """CheXpert Plus: the CSV of report sections per image."""
    from radlab.data.ingest import chexpert_plus

    _ingest(chexpert_plus.read(root, table, views), out, "chexpert-plus", root)


@ingest_app.command("iu-xray")
def ingest_iu(root: Annotated[Path, typer.Option(help="the PNG images (NLMCXR_png)")],
              reports: Annotated[Path, typer.Option(help="the XML reports (ecgen-radiology)")],
              out: Out = Path("data/iu_xray")) -> None:
    """IU X-ray / Open-I: XML reports and PNG images, split by report."""
    from radlab.data.ingest import iu_xray

    _ingest(iu_xray.read(root, reports), out, "iu-xray", root)


@ingest_app.command("generic")
def ingest_generic(table: Annotated[Path, typer.Option(help="a CSV (or .csv.gz) or JSONL of images and reports")],
                   mapping: Annotated[Path, typer.Option(help="YAML: columns {id, image, findings|report, ...}, labels")],
                   root: Annotated[Path, typer.Option(help="the folder image paths start from")],
                   out: Out = Path("data/custom"), views: Views = FRONTAL) -> None:
    """Any table with a column mapping."""
    from radlab.data.ingest import generic

    columns = or_exit(generic.load_mapping, mapping)
    _ingest(generic.read(root, table, columns, views), out, table.stem, root)


@data_app.command("stats")
def stats(path: Annotated[Path, typer.Argument(help="an ingested dataset folder or one manifest")],
          as_json: Annotated[bool, typer.Option("--json", help="print the cards as JSON")] = False) -> None:
    """The dataset card: records, views, text sources, labels and the manifest hash, per split."""
    from radlab.data.stats import card, folder_cards

    if path.is_dir():
        cards, summary = or_exit(folder_cards, path)
        if not cards:
            err_console.print(f"[red]{path}: no train/val/test.jsonl manifests (run radlab data ingest first)[/]")
            raise typer.Exit(2)
    else:
        cards, summary = [or_exit(card, path, "manifest")], None
    if as_json:
        console.print_json(json.dumps([{"name": c.name, "digest": c.digest, **c.profile} for c in cards]))
        return
    table = Table("manifest", "records", "views", "text", "datasets", "top labels", "findings words", "sha256",
                  title=f"dataset card: {path}")
    for c in cards:
        p = c.profile
        top = ", ".join(f"{k} {v}" for k, v in list(p["positive_labels"].items())[:4])
        table.add_row(c.name, str(p["records"]), _counts(p["views"]), _counts(p["text"]), _counts(p["datasets"]),
                      top, str(p["findings_words_mean"]), c.digest)
    print_table(console, table)
    if summary:
        _print_summary(summary)


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())



@data_app.command("structure")
def structure(folder: Annotated[Path, typer.Argument(help="an ingested dataset folder")],
              endpoint: Annotated[str, typer.Option(help="compatible (any OpenAI-compatible base URL), openai or azure")] = "compatible",
              base_url: Annotated[str, typer.Option(help="the server (compatible) or resource URL (azure)")] = None,
              model: Annotated[str, typer.Option(help="model, or deployment name on Azure")] = "gpt-4",
              opt_in_offsite: Annotated[bool, typer.Option("--opt-in-offsite", help="consent to send reports off this machine")] = False,
              concurrency: int = 8,
              requests_per_minute: Annotated[float, typer.Option("--rpm", help="requests per minute (default: no "
                                                                 "limit on this site, 30 off it)")] = None,
              splits: Annotated[list[str], typer.Option("--split", help="splits to structure (repeat)")] = ["train", "val"],
              synthesize_from_labels: Annotated[bool, typer.Option(help="write findings from labels where a report has none")] = False,
              limit: Annotated[int, typer.Option(help="only the first N records of each split")] = None,
              quality_judge: Annotated[bool, typer.Option(help="also judge LLM vs rule findings with CheXprompt")] = False,
              cache: Path = Path("radlab_runs/structure_cache.sqlite"),
              cost_per_1k_input: float = 0.0, cost_per_1k_output: float = 0.0) -> None:
    """Restructure reports with an LLM (the paper's GPT-4 step); adds `gpt4` records next to the rule ones."""
    from radlab.config import JudgeConfig, parse_section
    from radlab.data.structure import structure_folder
    from radlab.evaluation.text_quality import compare_texts

    values = {"endpoint": endpoint, "base_url": base_url, "model": model, "allow_offsite": opt_in_offsite,
              "concurrency": concurrency, "requests_per_minute": requests_per_minute, "cache": cache,
              "max_tokens": 1024, "cost_per_1k_input": cost_per_1k_input, "cost_per_1k_output": cost_per_1k_output}
    config = or_exit(parse_section, JudgeConfig, values, "radlab data structure", {"consent": "--opt-in-offsite"})
    with progress_bar() as bar:
        task = bar.add_task("structure", total=None)
        summary = or_exit(structure_folder, folder, config, tuple(splits), synthesize_from_labels, limit,
                          lambda n: bar.advance(task, n))
    rate = f"{config.rate_limit:g} requests/min" if config.rate_limit else "no rate limit"
    console.print(f"{summary.reports} reports: {summary.structured} structured ({summary.cached} from cache), "
                  f"{summary.failed} failed, {summary.skipped} without text to structure, {summary.kept} LLM "
                  f"records of an earlier pass kept; {summary.usage['requests']} requests ({rate}), "
                  f"{summary.usage['prompt_tokens']}+{summary.usage['completion_tokens']} tokens, "
                  f"cost {summary.cost:.4f}")
    for failure in summary.failures:
        console.print(f"  [yellow]failed[/] {failure}", highlight=False)
    quality = or_exit(compare_texts, summary.pairs, config if quality_judge else None, clusters=summary.patients)
    (folder / "structure_quality.json").write_text(json.dumps(
        {"model": model, "reports": summary.reports, "structured": summary.structured, "failed": summary.failed,
         "usage": summary.usage, "cost": summary.cost, "llm_vs_rule": quality}, indent=2))
    if quality:
        console.print("LLM vs rule findings: " + ", ".join(f"{k} {v:.2f}" for k, v in quality.items()
                                                        if not k.endswith(("_ci_low", "_ci_high"))))
    console.print(f"[green]ok[/] {folder}: choose text with data.mixture[].text: " + escape("[rule], [llm] or [rule, llm]"))


@data_app.command("preprocess")
def preprocess(folder: Annotated[Path, typer.Argument(help="an ingested dataset folder")],
               image_root: Annotated[Path, typer.Option(help="the folder the manifests' image paths start from")],
               size: Annotated[int, typer.Option(help="the encoder's input size (518 for BiomedCLIP-CXR)")] = 518,
               resize: Annotated[str, typer.Option(help="crop: the short side to --size and the centre kept (as "
                                                        "model.vision.resize); squash: both sides to --size; "
                                                        "pad: padded to a square first")] = "crop",
               out: Annotated[Path, typer.Option(help="folder for the Parquet shards")] = None,
               address: Annotated[str, typer.Option(help="a Ray cluster to run on (default: a local one)")] = None) -> None:
    """Decode and resize every image once, in parallel on Ray Data, into Parquet shards."""
    from radlab.config import RayConfig
    from radlab.data.image_pipeline import preprocess_folder
    from radlab.formats.images import ImageTransform
    from radlab.runtime import init_ray

    if resize not in ("crop", "squash", "pad"):
        err_console.print(f"--resize {resize}: expected crop, squash or pad")
        raise typer.Exit(2)
    init_ray(RayConfig(address=address))
    # Resolved here: Ray Data's tasks write from folders of their own, where a relative path means another place.
    folder, image_root = folder.resolve(), image_root.resolve()
    out = (out or folder.with_name(f"{folder.name}_{size}px")).resolve()
    summary = or_exit(preprocess_folder, folder, image_root, ImageTransform(size, resize=resize), out)
    for split, counts in summary["splits"].items():
        console.print(f"{split}: {counts['images']} images, {counts['unreadable']} unreadable")
    for example in summary["unreadable_examples"]:
        console.print(f"  [yellow]unreadable[/] {example}", highlight=False)
    console.print(f"[green]ok[/] shards in {out}")
