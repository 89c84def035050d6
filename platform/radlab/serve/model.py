"""The model a replica serves: a checkpoint loaded once, images decoded as it was trained on
them, findings generated in batches or streamed, prompts counted in tokens. Kept apart from
serve/app.py, which the `radlab serve` driver imports to bind the deployment: only the replica
loads torch, transformers and peft."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import TextIteratorStreamer

from radlab.formats.images import decode_image
from radlab.formats.prompts import encode_prompt, render_prompt
from radlab.model.checkpoint import load_checkpoint
from radlab.model.generation import (
    generate_batch,
    inference_model,
    num_image_tokens,
    pick_device_dtype,
    stop_strings,
    until_stop,
)
from radlab.model.sampling import Generated, Sampling, StreamFailed


class ServedModel:
    def __init__(self, folder: Path, device: str, dtype: str, cpus: float | None):
        loaded = load_checkpoint(folder)  # an error here fails the deployment with its reason
        self.device, self.dtype = pick_device_dtype(device, dtype)
        if self.device.type == "cpu" and cpus:
            torch.set_num_threads(max(1, int(cpus)))  # as many threads as the replica has CPUs (ray_actor_options)
        self.model = inference_model(loaded.model, self.device, self.dtype)
        self.tokenizer = loaded.tokenizer
        self.template = loaded.template
        self.transform = loaded.transform
        self.version = f"{loaded.meta.get('stage', '?')}@{loaded.meta.get('step', '?')}"

    def pixels(self, data: bytes, name: str, max_pixels: int) -> torch.Tensor:
        """The image as the model was trained on it; an ImageError names what is wrong with it."""
        return self.transform(decode_image(data, name, max_pixels))

    def generate(self, pixels: list[torch.Tensor], humans: list[str], sampling: Sampling) -> list[Generated]:
        return generate_batch(self.model, self.tokenizer, pixels, humans, self.template, sampling)

    def prompt_tokens(self, human: str) -> int:
        """The prompt's length as the model sees it, its image tokens included."""
        return len(encode_prompt(self.tokenizer, render_prompt(self.template, human), num_image_tokens(self.model)))

    def stream(self, pixels: torch.Tensor, human: str, sampling: Sampling, name: str) -> Iterator[str | Generated]:
        """One request's findings as they are generated: the text pieces, then the Generated. The
        generation runs in its own thread (`name`) and feeds a TextIteratorStreamer; if it fails,
        StreamFailed is raised after the pieces sent so far, instead of the stream hanging."""
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["generated"] = generate_batch(self.model, self.tokenizer, [pixels], [human], self.template,
                                                      sampling, streamer)[0]
            except Exception as err:
                outcome["error"] = f"{type(err).__name__}: {err}"
                streamer.end()

        worker = threading.Thread(target=run, name=name, daemon=True)
        worker.start()
        yield from until_stop(streamer, stop_strings(self.template, sampling))
        worker.join()
        if "error" in outcome:
            raise StreamFailed(outcome["error"])
        yield outcome["generated"]
