"""`radlab export` and `radlab import`: report models out to transformers, published ones in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from radlab.cli.common import console, fail, or_exit
from radlab.config import TrackingConfig

import_app = typer.Typer(no_args_is_help=True, help="Bring published checkpoints into radlab's format.")


def export(
    model: Annotated[str, typer.Argument(help="folder, runs:/<id>/model or models:/<name>@<alias>")],
    out: Annotated[Path, typer.Option(help="the folder to write")],
    format: Annotated[str, typer.Option(help="hf: a transformers LlavaForConditionalGeneration folder")] = "hf",
    merge_lora: Annotated[bool, typer.Option(help="fold LoRA adapters into the language model")] = True,
) -> None:
    """Export a report model for use without radlab (transformers' LLaVA classes)."""
    import tempfile

    from radlab.model.export import export_hf
    from radlab.tracking.runs import fetch_checkpoint, tracking_uri

    if format != "hf":
        raise fail(f"--format {format}: radlab exports hf (transformers) folders")
    with tempfile.TemporaryDirectory() as tmp:
        folder = or_exit(fetch_checkpoint, model, tracking_uri(TrackingConfig()), Path(tmp))
        or_exit(export_hf, folder, out, merge_lora)
    console.print(f"[green]exported[/] {model} to {out}: LlavaForConditionalGeneration.from_pretrained('{out}')")


OPEN_CLIP_FOLDER = ("the open_clip folder: the release's biomedclipcxr_518.json and biomedclipcxr_518_checkpoint.pt, "
                    "or the Hub's open_clip_config.json and open_clip_pytorch_model.bin")


@import_app.command("llava-rad")
def import_llava_rad_command(
    adapter: Annotated[Path, typer.Option(help="the release's folder: adapter_config.json, adapter_model.*, non_lora_trainables.bin")],
    base: Annotated[Path, typer.Option(help="the Vicuna-7B v1.5 folder (LlamaForCausalLM and tokenizer)")],
    vision: Annotated[Path, typer.Option(help=OPEN_CLIP_FOLDER)],
    out: Annotated[Path, typer.Option(help="the radlab checkpoint folder to write")],
) -> None:
    """Import the released LLaVA-Rad model: evaluate, serve, fine-tune or sweep from it."""
    from radlab.model.llava_rad import import_llava_rad

    folder = or_exit(import_llava_rad, adapter, base, vision, out)
    console.print(f"[green]imported[/] LLaVA-Rad to {folder}: radlab serve --model {folder}")


@import_app.command("open-clip-vision")
def import_open_clip_vision_command(
    vision: Annotated[Path, typer.Option(help=OPEN_CLIP_FOLDER)],
    out: Annotated[Path, typer.Option(help="the transformers ViT or Dinov2 folder to write")],
) -> None:
    """Convert an open_clip image tower (BiomedCLIP-CXR: dinov2, BiomedCLIP: vit) to a transformers folder."""
    from radlab.model.llava_rad import import_open_clip_vision

    folder, kind = or_exit(import_open_clip_vision, vision, out)
    console.print(f"[green]converted[/] {vision} to {folder}: model.vision: {{kind: {kind}, path: {folder}}}")


COMMANDS = {"export": export}
GROUPS = {"import": import_app}
