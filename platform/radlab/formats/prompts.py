"""Prompt templates, and turning a (prompt, findings) pair into token ids with the labels masked
so that only the findings tokens (and what ends them) are trained."""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_TOKEN = "<image>"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
IGNORE_INDEX = -100
# The manifest of each split in a dataset folder (ingested or synthetic).
SPLIT_FILES = {"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl"}


def render_prompt(template: str, human: str) -> str:
    """The text before the answer. `plain` (stage 1) keeps only the image; `vicuna_v1` the chat,
    the image first in the user's turn (LLaVA's and LLaVA-Rad's order); `vicuna_v1_image_last` the
    same chat with the image at the end of the user's turn, right before the answer, so that the
    findings start at the same distance from the image whatever the instruction and indication."""
    if template == "plain":
        return IMAGE_TOKEN
    if template == "vicuna_v1_image_last":
        text = human.replace(IMAGE_TOKEN, "").strip()
        return f"{VICUNA_SYSTEM} USER: {text}\n{IMAGE_TOKEN} ASSISTANT:"
    if template == "vicuna_v1":
        if IMAGE_TOKEN not in human:
            human = f"{IMAGE_TOKEN}\n{human}"
        return f"{VICUNA_SYSTEM} USER: {human} ASSISTANT:"
    raise ValueError(f"unknown template {template!r}")


# LLaVA's `plain` conversation (its stage 1) ends the findings with the separator "\n" and no
# end-of-sequence token; the chat template ends them with EOS.
PLAIN_END = "\n"


def render_target(template: str, findings: str) -> str:
    return findings + PLAIN_END if template == "plain" else f" {findings}"


def ends_with_eos(template: str) -> bool:
    return template != "plain"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def encode_prompt(tokenizer, prompt: str, num_image_tokens: int) -> list[int]:
    """BOS, the prompt's text pieces, and exactly `num_image_tokens` image tokens in place of <image>."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pieces = prompt.split(IMAGE_TOKEN)
    if len(pieces) != 2:
        raise ValueError(f"a prompt needs exactly one {IMAGE_TOKEN}, got {len(pieces) - 1}")
    for i, piece in enumerate(pieces):
        if i:
            ids += [image_id] * num_image_tokens
        if piece:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids


def encode_example(tokenizer, template: str, human: str, findings: str, num_image_tokens: int,
                   max_length: int) -> Encoded:
    prompt_ids = encode_prompt(tokenizer, render_prompt(template, human), num_image_tokens)
    target_ids = tokenizer(render_target(template, findings), add_special_tokens=False)["input_ids"]
    if ends_with_eos(template):
        target_ids = target_ids + [tokenizer.eos_token_id]
    room = max_length - len(prompt_ids)
    if room < 1:
        raise ValueError(f"the prompt alone takes {len(prompt_ids)} tokens, over max_length {max_length}")
    truncated = len(target_ids) > room
    target_ids = target_ids[:room]
    return Encoded(prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids, truncated)


# The 14 CheXpert observations, the label set of CheXpert, MIMIC-CXR and the released annotations.
CHEXPERT = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)


def findings_prompt(indication: str) -> str:
    """The human turn of a record: LLaVA-Rad's instruction, with the indication when there is one."""
    if indication:
        return ("<image>\nProvide a description of the findings in the radiology image given the "
                f"following indication: {indication}")
    return "<image>\nProvide a description of the findings in the radiology image."
