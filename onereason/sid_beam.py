"""Trie-constrained beam search over SIDs that prefills each prompt once.

`model.generate(num_beams=K)` copies every prompt K times *before* the prefill, so a
long prompt is encoded K times. Here each left-padded prompt is encoded once; its KV
cache is then copied to its K beams and only the answer tokens (a few per SID) are
decoded per beam. For plain `DynamicLayer` caches (most decoder LMs) the beams' cache is
one preallocated buffer per layer (`_BeamLayer`), so a step neither re-concatenates nor
re-gathers the prompt part; other layer types use the cache's own `reorder_cache`.

At every step each live beam's next-token log-probabilities are restricted to what the
SID trie allows after its prefix (`SIDTrie.allowed_tokens`, the same core as the
`generate` logits processor and `constrain_logits`), and the best K (prefix, score)
pairs over all beams of a prompt are kept. At the first step a prompt has a single live
beam, so its K beams start from K distinct tokens and never duplicate.

**Scores** are the sum, over the chosen SID tokens and the final EOS, of the model's
*unconstrained* `log_softmax` — the trie removes continuations but does not renormalise.
A score is therefore log p(SID, EOS | prompt) under the model itself; that is what
transformers' beam search reports as `sequences_scores` with `length_penalty=0` (it, too,
applies logits processors after `log_softmax`), and what the test-time-scaling merge of
`evaluation.generate` averages as a probability.

A beam that emitted EOS is finished: it keeps its score and is padded with `pad_token_id`
while others go on. With `num_sids` SIDs of equal length every beam finishes at the same
step; with `allow_fewer` some finish earlier and compete by their (larger, shorter) scores.
When the trie has fewer than K completions, the missing beams have score `-inf` and
sequences of `pad_token_id`: callers must skip them.

**Views** (`view_weights`, V of them): each user's prompt comes V times, as V views of the
same request (say the whole history, and its last item alone), stacked view by view: rows
`v * B ... v * B + B - 1` of the batch are view v of users 0 .. B - 1. One beam search runs
per user over the weighted sum of the views' log-probabilities: a SID scores
sum_v w_v log p(SID, EOS | view v), a product of experts, the model with itself. Each
view keeps its own KV cache; all follow the same beams. With one view of weight 1 this is
the plain search.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from onereason.trie import SIDTrie


def left_padded(heads: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (input_ids, attention_mask), padded on the left so every row ends where generation starts."""
    width = max(len(h) for h in heads)
    input_ids = torch.full((len(heads), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(heads), width), dtype=torch.long)
    for i, h in enumerate(heads):
        input_ids[i, width - len(h) :] = torch.tensor(h, dtype=torch.long)
        attention[i, width - len(h) :] = 1
    return input_ids, attention


class _BeamLayer(DynamicLayer):
    """A `DynamicLayer` for the beams of a prefilled prompt, with room for the answer tokens.

    The plain layer concatenates every new token onto the cache and `reorder_cache` copies
    the whole cache: both are a full copy of K × prompt-length keys and values per step,
    which dominates decoding a short SID. Here the buffer is allocated once; `update` writes
    the new token in place, and `reorder_cache` gathers only the answer part, because the
    prompt part is the same for every beam of a prompt and beams never move between prompts.
    """

    def __init__(self, layer: DynamicLayer, beams: int, capacity: int):
        super().__init__()
        rows, heads, width, dim = layer.keys.shape
        self.prompt_width = self.length = width
        self.dtype, self.device = layer.keys.dtype, layer.keys.device
        self.is_initialized = True
        self._buffers = []
        for cached in (layer.keys, layer.values):
            buffer = cached.new_empty(rows * beams, heads, capacity, cached.shape[-1])
            buffer.view(rows, beams, heads, capacity, -1)[:, :, :, :width] = cached.unsqueeze(1)
            self._buffers.append(buffer)
        self._views()

    def _views(self) -> None:
        self.keys, self.values = (b[:, :, : self.length] for b in self._buffers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self._buffers[0].shape[2]:
            raise RuntimeError(f"beam cache full: {end} tokens, room for {self._buffers[0].shape[2]}")
        for buffer, new in zip(self._buffers, (key_states, value_states)):
            buffer[:, :, self.length : end] = new
        self.length = end
        self._views()
        return self.keys, self.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for buffer in self._buffers:
            buffer[:, :, self.prompt_width : self.length] = buffer[
                beam_idx, :, self.prompt_width : self.length
            ]


def _expand_cache(cache: DynamicCache, rows: torch.Tensor, beams: int, capacity: int) -> None:
    """Give each prompt's cache to its `beams` beams (`rows` = prompt index per beam, grouped)."""
    if all(type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers):
        cache.layers = [_BeamLayer(layer, beams, capacity) for layer in cache.layers]
    else:  # sliding-window or other layer types: their own (copying) reorder is correct
        cache.reorder_cache(rows)


@torch.no_grad()
def constrained_beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: SIDTrie,
    num_beams: int,
    num_sids: int = 1,
    allow_fewer: bool | None = None,
    pad_token_id: int | None = None,
    view_weights: Sequence[float] = (1.0,),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequences [B, num_beams, T], scores [B, num_beams]) of the best trie-valid answers.

    `input_ids` / `attention_mask` are a left-padded batch of prompts [V * B, W], V =
    `len(view_weights)` views of B users, stacked view by view (module doc). `sequences`
    holds only the generated tokens (SID tokens, then EOS, then `pad_token_id`); T is at most
    `num_sids * sid_length + 1`. Beams are sorted by score, best first; see the module doc
    for what a score is and for the `-inf` padding beams.
    """
    if num_beams < 1 or num_sids < 1:
        raise ValueError(f"num_beams and num_sids must be >= 1, got {num_beams} and {num_sids}")
    if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
            "must be the same [batch, width]"
        )
    views = len(view_weights)
    if views < 1 or input_ids.shape[0] % views:
        raise ValueError(f"{input_ids.shape[0]} prompts are not {views} views of the same users")
    allow_fewer = trie.allow_fewer if allow_fewer is None else allow_fewer
    device = input_ids.device
    eos_ids = trie.eos_ids(device)
    pad = int(eos_ids[0]) if pad_token_id is None else int(pad_token_id)
    batch = input_ids.shape[0] // views
    weights = torch.tensor(view_weights, dtype=torch.float32, device=device).view(views, 1, 1)
    attention_mask = attention_mask.to(device=device, dtype=torch.long)

    # Prefill each prompt once; positions count real tokens only (left padding).
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    next_position = attention_mask.sum(-1)  # [V * B]: position of the first answer token
    logits = out.logits[:, -1]

    # Beam state, [batch * beams_per_prompt] rows; one live beam per prompt to start.
    width = 1
    scores = torch.zeros(batch, 1, device=device)
    finished = torch.zeros(batch, 1, dtype=torch.bool, device=device)
    node = trie.root(batch, device)  # trie node of the current SID prefix
    tokens = torch.empty(batch, 1, 0, dtype=torch.long, device=device)
    sid_length = trie.sid_length
    for step in range(num_sids * sid_length + 1):
        # What may follow each beam's prefix; finished beams carry over as a single candidate.
        vocab = logits.shape[-1]
        allowed = trie.allowed_tokens(node, step, vocab, num_sids, allow_fewer)
        log_probs = torch.log_softmax(logits.float(), dim=-1).view(views, batch * width, vocab)
        log_probs = (weights * log_probs).sum(0)  # [batch * width, vocab]: the views' weighted sum
        log_probs = log_probs.masked_fill(~allowed, float("-inf"))
        candidates = scores.reshape(-1, 1) + log_probs  # [batch * width, vocab]
        flat_finished = finished.reshape(-1)
        carried = torch.full_like(candidates, float("-inf"))
        carried[:, pad] = scores.reshape(-1)
        candidates = torch.where(flat_finished.unsqueeze(1), carried, candidates)

        k = min(num_beams, width * vocab)
        top_scores, top = candidates.reshape(batch, width * vocab).topk(k, dim=1)  # sorted
        parent, token = top // vocab, top % vocab  # [B, k]
        rows = (torch.arange(batch, device=device).unsqueeze(1) * width + parent).reshape(-1)
        parent_finished = flat_finished[rows].reshape(batch, k)
        token = torch.where(parent_finished, torch.full_like(token, pad), token)
        dead = top_scores == float("-inf")  # fewer valid continuations than beams
        token = torch.where(dead, torch.full_like(token, pad), token)
        finished = parent_finished | dead | torch.isin(token, eos_ids)
        scores = top_scores
        tokens = torch.cat(
            [tokens.reshape(batch * width, -1)[rows].reshape(batch, k, -1), token[..., None]], -1
        )
        parents, width = width, k

        # Advance the trie: a completed SID goes back to the root for the next one.
        node = trie.advance(node[rows], token.reshape(-1), step)
        if bool(finished.all()):
            break

        # One decoding step for every beam (finished ones too: the batch moves together), in
        # every view: view v's rows follow the same beams, offset by its block.
        view_rows = torch.cat([v * batch * parents + rows for v in range(views)]) if views > 1 else rows
        if step == 0 and k == num_beams:  # the beam count stays k from here on
            _expand_cache(cache, view_rows, k, input_ids.shape[1] + num_sids * sid_length + 1)
        else:
            cache.reorder_cache(view_rows)
        attention_mask = torch.cat(
            [attention_mask[view_rows], torch.ones(views * batch * k, 1, dtype=torch.long, device=device)],
            dim=1,
        )
        next_position = next_position[view_rows]
        out = model(
            input_ids=token.reshape(1, -1).expand(views, -1).reshape(-1, 1),
            attention_mask=attention_mask,
            position_ids=(next_position + step).unsqueeze(1),
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1]

    if width < num_beams:  # a vocabulary smaller than num_beams: pad to the promised shape
        extra = num_beams - width
        scores = torch.cat([scores, scores.new_full((batch, extra), float("-inf"))], dim=1)
        tokens = torch.cat([tokens, tokens.new_full((batch, extra, tokens.shape[-1]), pad)], dim=1)
    tokens = tokens.masked_fill((scores == float("-inf")).unsqueeze(-1), pad)
    return tokens, scores
