"""A scripted causal LM for the LLM-teacher paths (CoT traces, Term IDs): `generate` replays a script.

It stands in for the model only: the tokenizer, chat template, decoding and every check after
generation are the real ones. `script(request_number, attempt, prompt)` returns the text to write;
a request is numbered by the order its prompt first appears, `attempt` counts its generations.
"""

from __future__ import annotations

from collections import defaultdict

import torch


class ScriptedLM:
    def __init__(self, tokenizer, script):
        self.tokenizer, self.script = tokenizer, script
        self.order: dict[str, int] = {}
        self.attempts: dict[str, int] = defaultdict(int)

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask=None, pad_token_id=None, **kwargs):
        prompts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        outs = []
        for prompt in prompts:
            number = self.order.setdefault(prompt, len(self.order))
            text = self.script(number, self.attempts[prompt], prompt)
            self.attempts[prompt] += 1
            outs.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        pad = self.tokenizer.pad_token_id if pad_token_id is None else pad_token_id
        width = max(map(len, outs))
        new = torch.tensor([o + [pad] * (width - len(o)) for o in outs], dtype=input_ids.dtype)
        return torch.cat([input_ids, new], dim=1)
