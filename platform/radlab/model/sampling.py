"""How findings are decoded and what decoding gave back: plain records, without torch, so that
the serving application's HTTP side builds and reads them without loading the model code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """How findings are decoded: greedily at temperature 0, else sampled; at most `max_new_tokens`;
    the text ends before the first of `stop`."""
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Generated:
    text: str
    tokens: int  # generated token ids, the end-of-sequence token included
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length" (max_new_tokens reached)


class StreamFailed(RuntimeError):
    """A streamed generation failed after its first pieces were sent."""
