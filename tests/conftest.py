"""Shared fixtures: tiny models built in the session (plain helpers are in helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = [
    "Derivation: the recent items share a category. Evolution: a long-term interest in lab glassware.",
    "Recommendation: the next item is likely a premium beaker from the same brand family.",
    "What will the user interact with next? The user's history, oldest first:",
    "Hand tools, measuring instruments, safety gloves, microscope slides, test tubes and pipettes.",
] * 20


@pytest.fixture(scope="session")
def make_tiny_model(tmp_path_factory):
    """Build a tiny Qwen3 model folder (cached per itemic-token set for the session)."""
    from onereason.modeling import init_model

    cache: dict[tuple, Path] = {}

    def make(itemic_tokens=(), corpus=None, preset="tiny") -> Path:
        key = (tuple(itemic_tokens), preset, None if corpus is None else len(corpus))
        if key not in cache:
            out = tmp_path_factory.mktemp("tiny-model")
            init_model(out, corpus or CORPUS, preset=preset, itemic_tokens=list(itemic_tokens), seed=0)
            cache[key] = out
        return cache[key]

    return make
