"""The thinking switch (Qwen3 conventions) and the shape of answers.

One place decides how a prompt asks for thinking and how an answer is split into its
trace and its item part, so data builders, rewards, rollouts and evaluation agree.
"""

from __future__ import annotations

import re
from typing import Literal

Mode = Literal["think", "no_think"]
MODES: tuple[Mode, ...] = ("think", "no_think")

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
SWITCH = {"think": "/think", "no_think": "/no_think"}
# What the assistant turn starts with when no thinking is wanted (Qwen3's own template
# emits exactly this for `enable_thinking=False`).
EMPTY_THINK = "<think>\n\n</think>\n\n"

_SWITCH_RE = re.compile(r"\s*/(?:no_)?think\s*$")


def with_switch(user_text: str, mode: Mode) -> str:
    """`user_text` ending in exactly one switch for `mode` (an old switch is replaced)."""
    if mode not in SWITCH:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return _SWITCH_RE.sub("", user_text) + " " + SWITCH[mode]


def switch_mode(messages: list[dict], mode: Mode) -> list[dict]:
    """A copy of a chat whose last user turn asks for `mode` instead; nothing else changes.

    Thinking and non-thinking evaluation use this so both see the same history text.
    """
    out = [dict(m) for m in messages]
    for m in reversed(out):
        if m["role"] == "user":
            m["content"] = with_switch(m["content"], mode)
            return out
    raise ValueError("chat has no user turn to carry the thinking switch")


def format_answer(answer: str, trace: str | None) -> str:
    """Assistant content: a think block (empty when `trace` is None) then the answer."""
    if trace is None:
        return EMPTY_THINK + answer
    return f"{THINK_OPEN}\n{trace.strip()}\n{THINK_CLOSE}\n\n{answer}"


def split_answer(text: str) -> tuple[str | None, str]:
    """(trace, answer) of generated text. The trace is None when no think block closed;
    an empty think block gives trace ''."""
    if THINK_CLOSE not in text:
        return None, text.strip()
    head, _, tail = text.partition(THINK_CLOSE)
    trace = head.split(THINK_OPEN, 1)[-1].strip()
    return trace, tail.strip()
