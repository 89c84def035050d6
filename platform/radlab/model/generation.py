"""Generation of findings from (image tensor, prompt) pairs: one place for evaluation (greedy) and
serving (greedy or sampled, batched or streamed) alike."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from radlab.formats.batch import collate
from radlab.formats.prompts import IMAGE_TOKEN, PLAIN_END, encode_prompt, ends_with_eos, render_prompt
from radlab.model.sampling import Generated, Sampling


def pick_device_dtype(device: str, dtype: str,
                      capability: tuple[int, int] | None = None) -> tuple[torch.device, torch.dtype]:
    """fp32 on CPUs; on GPUs bf16 from compute capability 8.0 (A100, H100, L4), fp16 below
    (V100 is 7.0, T4 7.5). `capability` defaults to the current GPU's."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and capability is None:
        capability = torch.cuda.get_device_capability()
    has_bf16 = capability is not None and capability >= (8, 0)
    if dtype == "auto":
        dtype = "fp32" if device == "cpu" else "bf16" if has_bf16 else "fp16"
    elif dtype == "bf16" and device == "cuda" and not has_bf16:
        raise ValueError(f"dtype bf16: this GPU (compute capability {capability[0]}.{capability[1]}, e.g. V100 or "
                         "T4) has no bf16; use fp16 or auto")
    return torch.device(device), {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def inference_model(model, device: torch.device, dtype: torch.dtype):
    """The model as generation wants it: LoRA folded in (no adapter work per token), PyTorch's
    SDPA attention (V100s have no FlashAttention-2), on `device` in `dtype`, in eval mode."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.set_attn_implementation("sdpa")
    return model.to(device, dtype).eval()


def num_image_tokens(model) -> int:
    from radlab.model.build import llava_config

    vision = llava_config(model).vision_config
    return (vision.image_size // vision.patch_size) ** 2


def stop_strings(template: str, sampling: Sampling) -> list[str]:
    """The request's stop strings, and PLAIN_END for a model trained on the plain template, which
    ends its findings with it rather than with EOS."""
    return [s for s in sampling.stop if s] + ([] if ends_with_eos(template) else [PLAIN_END])


class StopInAnswer(StoppingCriteria):
    """A `stopping_criteria` entry: a row is done once its answer (the tokens generated after the
    prompt) holds one of `stops`. Used instead of transformers' `stop_strings`, whose
    StopStringCriteria looks at a sequence's last tokens prompt included: a stop string that begins
    in the prompt (":q" after a prompt ending "ASSISTANT:") ended a report after its first token.
    Checked every step, a stop can only newly end in the last token, so each row's last tokens are
    decoded: enough of them to hold the longest stop's bytes and the token it ends in."""

    def __init__(self, tokenizer, stops: list[str], prompt_length: int):
        self.tokenizer, self.stops, self.prompt_length = tokenizer, stops, prompt_length
        self.window = max(len(s.encode()) for s in stops) + 1

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        start = max(self.prompt_length, input_ids.shape[1] - self.window)
        tails = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        return torch.tensor([any(s in tail for s in self.stops) for tail in tails], dtype=torch.bool,
                            device=input_ids.device)


def first_stop(text: str, stops: list[str]) -> int | None:
    found = [text.find(s) for s in stops if s in text]
    return min(found) if found else None


def until_stop(pieces: Iterable[str], stops: list[str]) -> Iterator[str]:
    """Streamed text as it can be shown: nothing from the first stop string on, nothing that may
    still turn out to begin one, no leading or trailing whitespace (as the unstreamed text is
    stripped), so the pieces join to the unstreamed text."""
    held, started = "", False
    for piece in pieces:
        held += piece
        if not started:
            held = held.lstrip()
            started = bool(held)
        cut = first_stop(held, stops)
        if cut is not None:
            if held[:cut].rstrip():
                yield held[:cut].rstrip()
            return
        keep = max([k for s in stops for k in range(1, len(s)) if held.endswith(s[:k])], default=0)
        ready = held[:len(held) - keep].rstrip()
        if ready:
            yield ready
            held = held[len(ready):]


@torch.inference_mode()
def generate_batch(model, tokenizer, pixels: list[torch.Tensor], humans: list[str], template: str,
                      sampling: Sampling, streamer=None) -> list[Generated]:
    """Findings for each (image, human turn), decoded in one left-padded batch; a `streamer`
    (transformers' TextIteratorStreamer, one item only) receives the tokens as they are generated."""
    tokens = num_image_tokens(model)
    items = [{"input_ids": encode_prompt(tokenizer, render_prompt(template, human), tokens), "pixel_values": p}
             for p, human in zip(pixels, humans)]
    batch = collate(items, tokenizer.pad_token_id, left_pad=True)
    parameter = next(model.parameters())
    stops = stop_strings(template, sampling)
    prompt_length = batch["input_ids"].shape[1]
    decoding = ({"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
                if sampling.temperature > 0 else {"do_sample": False})
    # <image> is an input placeholder, never an answer: a pretrained language model's embeddings
    # gained its row at random, so it is suppressed rather than left to chance.
    out = model.generate(
        suppress_tokens=[tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)],
        input_ids=batch["input_ids"].to(parameter.device),
        attention_mask=batch["attention_mask"].to(parameter.device),
        pixel_values=batch["pixel_values"].to(parameter.device, dtype=parameter.dtype),
        max_new_tokens=sampling.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, streamer=streamer, **decoding,
        **({"stopping_criteria": StoppingCriteriaList([StopInAnswer(tokenizer, stops, prompt_length)])}
           if stops else {}),
    )
    return [_finished(row.tolist(), tokenizer, stops, sampling.max_new_tokens) for row in out[:, prompt_length:]]


def _finished(ids: list[int], tokenizer, stops: list[str], max_new_tokens: int) -> Generated:
    """One generated row: finished sequences are padded to the batch's longest with the pad id."""
    if tokenizer.eos_token_id in ids:
        ids = ids[:ids.index(tokenizer.eos_token_id) + 1]
    else:
        while ids and ids[-1] == tokenizer.pad_token_id:
            ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    cut = first_stop(text, stops)
    stopped = cut is not None or (ids and ids[-1] == tokenizer.eos_token_id) or len(ids) < max_new_tokens
    return Generated(text[:cut].strip(), len(ids), "stop" if stopped else "length")


def generate_texts(model, tokenizer, pixels: list[torch.Tensor], humans: list[str], template: str,
                   max_new_tokens: int) -> list[str]:
    """Greedy findings for each (image, human turn), as evaluation writes them."""
    return [g.text for g in generate_batch(model, tokenizer, pixels, humans, template, Sampling(max_new_tokens))]
