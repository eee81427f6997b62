"""Three-level traces written by a teacher LLM, verified before use.

Any local causal LM writes the trace from a prompt that shows the history *and* the
target (`templates/teacher.yaml`): with transformers by default, or vLLM when it is
installed and asked for. A teacher can return garbage, loop, or give the answer away, so
every output goes through `verify_trace`:

- the three sections `Derivation:`, `Evolution:`, `Recommendation:` appear, in order;
- no leak of any target (`leakage.find_leaks`: SID, title, distinguishing term);
- every cited history number `#n` exists, and every SID written is one of the history's;
- no degenerate repetition (the same 8-word window many times over: a loop).

A rejected output is retried with sampling (`retries` times); what still fails is
returned as None and counted per reason, so the builder can fall back or drop. The
acceptance rate is in `report()`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass

from data_builders.tasks.catalog import ItemCatalog
from data_builders.tasks.cot import CITATION, SECTIONS, section_texts
from data_builders.tasks.history import HistoryStyle, render_history
from data_builders.tasks.leakage import find_leaks, forbidden_for
from data_builders.tasks.phrasing import load_templates

logger = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")
LOOP_WINDOW = 8
LOOP_REPEATS = 3


@dataclass
class TeacherRequest:
    history: list[int]
    targets: list[int]


def verify_trace(
    text: str, catalog: ItemCatalog, history: list[int], targets: list[int], index=None
) -> str | None:
    """Why `text` is not an acceptable trace (a reason name), or None when it is."""
    text = text.strip()
    if not text:
        return "empty"
    if section_texts(text) is None:
        return "missing_sections"
    if find_leaks(text, catalog, targets):
        return "leak"
    if any(not 1 <= int(n) <= len(history) for n in CITATION.findall(text)):
        return "bad_citation"
    if index is not None:
        allowed = {catalog.item_ids[i] for i in history}
        if any(item not in allowed for item in index.parse_items(text)):
            return "unknown_item"
    words = _WORD.findall(text.lower())
    windows = Counter(tuple(words[i : i + LOOP_WINDOW]) for i in range(max(0, len(words) - LOOP_WINDOW + 1)))
    if windows and windows.most_common(1)[0][1] >= LOOP_REPEATS:
        return "loop"
    return None


def clean_output(text: str) -> str:
    """The trace part of a generation: drop a think wrapper the teacher may add, keep from 'Derivation:'."""
    text = text.replace("<think>", "").replace("</think>", "")
    start = text.find(SECTIONS[0])
    return (text[start:] if start >= 0 else text).strip()


class TeacherCot:
    """Generates and verifies traces with a causal LM (`backend`: transformers | vllm | auto)."""

    def __init__(
        self,
        catalog: ItemCatalog,
        model: str,
        backend: str = "auto",
        max_new_tokens: int = 384,
        retries: int = 2,
        batch_size: int = 8,
        temperature: float = 0.7,
        seed: int = 0,
        index=None,
        history_style: HistoryStyle | None = None,
    ):
        self.catalog = catalog
        self.index = index
        self.style = history_style or HistoryStyle()
        self.max_new_tokens = max_new_tokens
        self.retries = retries
        self.batch_size = batch_size
        self.temperature = temperature
        self.seed = seed
        self.templates = load_templates("teacher")
        self.requested = self.accepted = 0
        self.rejected: Counter = Counter()
        self.attempts = 0
        self._generate = self._load(model, backend)

    # ------------------------------------------------------------------ backends

    def _load(self, model: str, backend: str):
        if backend not in ("auto", "transformers", "vllm"):
            raise ValueError(f"teacher backend must be auto, transformers or vllm, got {backend!r}")
        if backend in ("auto", "vllm"):
            try:
                import vllm  # noqa: F401
            except ImportError:
                if backend == "vllm":
                    raise
            else:
                return self._vllm(model)
        return self._transformers(model)

    def _vllm(self, model: str):
        from vllm import LLM, SamplingParams

        llm = LLM(model=model, seed=self.seed)

        def generate(chats: list[list[dict]], sample: bool) -> list[str]:
            params = SamplingParams(
                temperature=self.temperature if sample else 0.0,
                max_tokens=self.max_new_tokens,
                seed=self.seed,
            )
            outs = llm.chat(chats, params, use_tqdm=False)
            return [o.outputs[0].text for o in outs]

        return generate

    def _transformers(self, model_path: str):
        import torch

        from onereason.modeling import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(model_path)
        model.eval()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

        def generate(chats: list[list[dict]], sample: bool) -> list[str]:
            if tokenizer.chat_template:
                texts = [
                    tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                    for c in chats
                ]
            else:
                texts = ["\n\n".join(m["content"] for m in c) + "\n\n" for c in chats]
            enc = tokenizer(texts, return_tensors="pt", padding=True)
            torch.manual_seed(self.seed + self.attempts)
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=sample,
                    temperature=self.temperature if sample else None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tokenizer.pad_token_id,
                )
            return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

        return generate

    # ------------------------------------------------------------------ traces

    def chat(self, request: TeacherRequest) -> list[dict]:
        c, t = self.catalog, self.templates
        target = request.targets[0]
        attrs = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in c.attributes[target].items())
        forbidden = forbidden_for(c, request.targets)[0]
        words = [w for w in (forbidden.term,) if w] or ["(none)"]
        user = t["user"].format(
            history=render_history(c, request.history, self.style),
            target=f"{c.titles[target] or 'an item'} ({attrs})",
            forbidden=", ".join(words),
        )
        return [{"role": "system", "content": t["system"]}, {"role": "user", "content": user}]

    def traces(self, requests: list[TeacherRequest]) -> list[str | None]:
        """One verified trace (or None) per request, in order."""
        results: list[str | None] = [None] * len(requests)
        reasons: dict[int, str] = {}
        pending = list(range(len(requests)))
        self.requested += len(requests)
        for attempt in range(self.retries + 1):
            still = []
            for start in range(0, len(pending), self.batch_size):
                batch = pending[start : start + self.batch_size]
                self.attempts += len(batch)
                outs = self._generate([self.chat(requests[i]) for i in batch], attempt > 0)
                for i, out in zip(batch, outs):
                    text = clean_output(out)
                    reason = verify_trace(
                        text, self.catalog, requests[i].history, requests[i].targets, self.index
                    )
                    if reason is None:
                        results[i] = text
                    else:
                        reasons[i] = reason
                        still.append(i)
            pending = still
            if not pending:
                break
        for i in pending:
            self.rejected[reasons[i]] += 1
        self.accepted += len(requests) - len(pending)
        logger.info("teacher traces: %d/%d accepted", self.accepted, self.requested)
        return results

    def report(self) -> dict:
        return {
            "requested": self.requested,
            "accepted": self.accepted,
            "acceptance_rate": self.accepted / self.requested if self.requested else 0.0,
            "generations": self.attempts,
            "rejected_by_reason": dict(self.rejected),
        }
