"""The SID trie: constrained decoding and constrained log-probabilities from one core.

Every SID of the item index is a fixed-length sequence of L token ids (`<|sid_begin|>`,
one itemic token per level, `<|sid_end|>`; L = levels for MiniOneRec-style SIDs without
boundary tokens). The trie over those sequences is stored as flat tensors so that a
whole batch × beams is advanced with a handful of torch ops and no Python loop over rows:

- `edge_keys` (sorted): `parent_node * key_base + token` for every edge, `edge_child`
  the node it leads to. Walking a batch of (node, token) pairs is one `searchsorted`.
- `child_start[node]`, `child_count[node]`: a node's edges are contiguous in `edge_keys`,
  so the tokens allowed after a node are `edge_token[start : start + count]`.

Because every SID has the same length, the trie state of a generated answer needs no
memory between steps: the position inside the current SID is `(tokens generated) % L`,
so the node is found by walking only the last `< L` tokens from the root. That is what
lets the processor work with beam search, which reorders beams between steps.

The same `_allowed_mask` builds the mask for `generate` (`SIDLogitsProcessor`), for
`constrain_logits` and for beam search (`allowed_tokens` / `advance`, the public stepping
API of `onereason.sid_beam`), so the log-probs RL computes are those of the policy that
sampled. `constrain_logits` reads only columns inside the batch, so callers pass their
logits as they are (no padding on the right).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from onereason.item_index import ItemIndex


class SIDTrie:
    """A prefix trie over the token ids of every SID in an item index.

    `num_sids` / `allow_fewer` / `eos_token_id` set here are the defaults of both
    `logits_processor` and `constrain_logits`; keep them equal between generation and
    the log-prob computation, or the log-probs are not those of the sampling policy.
    """

    def __init__(
        self,
        sequences: np.ndarray,
        eos_token_id: int | Sequence[int],
        num_sids: int = 1,
        allow_fewer: bool = False,
    ):
        sequences = np.unique(np.asarray(sequences, dtype=np.int64), axis=0)  # sorted, distinct
        if sequences.ndim != 2 or len(sequences) == 0:
            raise ValueError(
                f"SID token sequences must be a non-empty (n_sids, L) array, got shape {sequences.shape}"
            )
        self.sid_length = int(sequences.shape[1])
        self.n_sids = int(len(sequences))
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if not eos or any(e is None for e in eos):
            raise ValueError("the SID trie needs an EOS token id (the tokenizer has none; pass eos_token_id)")
        self.eos_token_ids = torch.tensor(sorted({int(e) for e in eos}), dtype=torch.long)
        if np.isin(sequences, self.eos_token_ids.numpy()).any():
            raise ValueError("an EOS token id also appears inside a SID")
        self.num_sids = num_sids
        self.allow_fewer = allow_fewer
        self.key_base = int(max(sequences.max(), self.eos_token_ids.max().item())) + 1
        self._build(sequences)
        self._device_cache: dict[torch.device, dict[str, torch.Tensor]] = {}

    # --- construction ------------------------------------------------------------------
    def _build(self, seqs: np.ndarray) -> None:
        """Number the nodes depth by depth and list the edges sorted by (parent, token).

        Rows are sorted, so the distinct prefixes of length d are runs of rows: row i starts
        a new depth-d node exactly when it differs from row i-1 within its first d tokens.
        """
        n, length = seqs.shape
        first_diff = np.zeros(n, dtype=np.int64)  # first column where row i differs from row i-1
        if n > 1:
            differs = seqs[1:] != seqs[:-1]
            first_diff[1:] = np.argmax(differs, axis=1)
        keys, children = [], []
        parent = np.zeros(n, dtype=np.int64)  # node of each row's prefix of length d-1 (root = 0)
        next_id = 1
        for d in range(1, length + 1):
            starts = first_diff < d
            starts[0] = True
            node = next_id + np.cumsum(starts) - 1
            keys.append(parent[starts] * self.key_base + seqs[starts, d - 1])
            children.append(node[starts])
            next_id += int(starts.sum())
            parent = node
        self.n_nodes = next_id
        self.edge_keys = torch.from_numpy(np.concatenate(keys))
        self.edge_child = torch.from_numpy(np.concatenate(children))
        self.edge_token = self.edge_keys % self.key_base
        edge_parent = self.edge_keys // self.key_base
        nodes = torch.arange(self.n_nodes, dtype=torch.long)
        self.child_start = torch.searchsorted(edge_parent, nodes)
        self.child_count = torch.searchsorted(edge_parent, nodes, right=True) - self.child_start
        self.max_children = int(self.child_count.max())

    @classmethod
    def from_index(
        cls,
        index: ItemIndex,
        tokenizer: PreTrainedTokenizerBase,
        eos_token_id: int | Sequence[int] | None = None,
        num_sids: int = 1,
        allow_fewer: bool = False,
    ) -> SIDTrie:
        """The trie of every SID of `index`, in `tokenizer`'s ids (EOS: the tokenizer's).

        Each itemic token must be one token of the tokenizer; a missing one means the
        index and the tokenizer do not belong together, and that is an error.
        """
        sequences = sid_token_sequences(index, tokenizer)
        if eos_token_id is None:
            eos_token_id = tokenizer.eos_token_id
        return cls(sequences, eos_token_id, num_sids=num_sids, allow_fewer=allow_fewer)

    # --- the vectorised core -----------------------------------------------------------
    def _tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        if device not in self._device_cache:
            self._device_cache[device] = {
                name: getattr(self, name).to(device)
                for name in (
                    "edge_keys",
                    "edge_child",
                    "edge_token",
                    "child_start",
                    "child_count",
                    "eos_token_ids",
                )
            }
        return self._device_cache[device]

    def _child(self, t: dict[str, torch.Tensor], node: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """The child of each `node` by `token`, -1 where there is none (or node is -1)."""
        ok = (node >= 0) & (token >= 0) & (token < self.key_base)
        key = node * self.key_base + token
        pos = torch.searchsorted(t["edge_keys"], key).clamp(max=len(self.edge_keys) - 1)
        found = ok & (t["edge_keys"][pos] == key)
        return torch.where(found, t["edge_child"][pos], torch.full_like(node, -1))

    def _allowed_mask(
        self, t: dict[str, torch.Tensor], node: torch.Tensor, eos_ok: torch.Tensor, vocab_size: int
    ) -> torch.Tensor:
        """bool [N, vocab_size]: the children of `node` (none for -1), plus EOS where `eos_ok`."""
        n = node.shape[0]
        safe = node.clamp(min=0)
        count = torch.where(node >= 0, t["child_count"][safe], torch.zeros_like(node))
        offsets = torch.arange(self.max_children, device=node.device)
        pos = t["child_start"][safe].unsqueeze(1) + offsets
        real = offsets < count.unsqueeze(1)
        tokens = t["edge_token"][pos.clamp(max=len(self.edge_token) - 1)]
        tokens = torch.where(real, tokens, torch.full_like(tokens, vocab_size))  # extra column, dropped
        mask = torch.zeros(n, vocab_size + 1, dtype=torch.bool, device=node.device)
        mask.scatter_(1, tokens, True)
        eos = t["eos_token_ids"]
        mask[:, eos] |= eos_ok.unsqueeze(1)
        return mask[:, :vocab_size]

    def _state(
        self, t, node: torch.Tensor, depth: torch.Tensor, done: torch.Tensor, num_sids: int, allow_fewer: bool
    ):
        """(node whose children are allowed, EOS allowed) from the position in the SID stream."""
        at_boundary = depth == 0
        full = done >= num_sids
        node = torch.where(at_boundary & full, torch.full_like(node, -1), node)
        enough = (full | (done >= 1)) if allow_fewer else full
        eos_ok = at_boundary & enough
        return node, eos_ok

    # --- stepping through answers (beam search) --------------------------------------
    def root(self, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Trie nodes of `rows` answers that have not started yet."""
        return torch.zeros(rows, dtype=torch.long, device=device)

    def eos_ids(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The EOS token ids, on `device`."""
        return self._tensors(torch.device(device))["eos_token_ids"]

    def allowed_tokens(
        self,
        node: torch.Tensor,
        position: int,
        vocab_size: int,
        num_sids: int | None = None,
        allow_fewer: bool | None = None,
    ) -> torch.Tensor:
        """bool [N, vocab_size]: the tokens allowed next for answers at trie `node` that have
        `position` tokens so far (the same rule as the processor and `constrain_logits`)."""
        num_sids = self.num_sids if num_sids is None else num_sids
        allow_fewer = self.allow_fewer if allow_fewer is None else allow_fewer
        t = self._tensors(node.device)
        depth = torch.full_like(node, position % self.sid_length)
        done = torch.full_like(node, position // self.sid_length)
        node, eos_ok = self._state(t, node, depth, done, num_sids, allow_fewer)
        return self._allowed_mask(t, node, eos_ok, vocab_size)

    def advance(self, node: torch.Tensor, token: torch.Tensor, position: int) -> torch.Tensor:
        """The trie node after `token` was written at answer `position`: the child (-1 off the
        trie), or the root again when the token completed a SID."""
        if (position + 1) % self.sid_length == 0:
            return self.root(node.shape[0], node.device)
        return self._child(self._tensors(node.device), node, token)

    # --- generation ------------------------------------------------------------------
    def logits_processor(
        self,
        prompt_length: int,
        num_sids: int | None = None,
        allow_fewer: bool | None = None,
    ) -> SIDLogitsProcessor:
        """A `LogitsProcessor` holding every token after `prompt_length` to the trie."""
        return SIDLogitsProcessor(
            self,
            prompt_length,
            self.num_sids if num_sids is None else num_sids,
            self.allow_fewer if allow_fewer is None else allow_fewer,
        )

    def constrain_logits(
        self,
        logits: torch.Tensor,
        ids: torch.Tensor,
        sid_start: torch.Tensor,
        num_sids: int | None = None,
        allow_fewer: bool | None = None,
    ) -> torch.Tensor:
        """`logits[b, t]` (predicting `ids[b, t]`) with -inf on what the trie forbids there.

        Positions `t >= sid_start[b]` are held to the trie given `ids[b, sid_start[b]:t]`
        (the same rule as the processor). Positions after the first EOS of the SID part,
        or after a token the trie forbids, are returned untouched: the sequence has left
        the constrained part there (padding, or text the policy did not produce under the
        trie), and a caller masks them out. Differentiable: a new tensor, gradients flow to
        the allowed entries.
        """
        num_sids = self.num_sids if num_sids is None else num_sids
        allow_fewer = self.allow_fewer if allow_fewer is None else allow_fewer
        batch, length, vocab = logits.shape
        device = logits.device
        t = self._tensors(device)
        ids = ids.to(device)
        k = torch.arange(length, device=device).unsqueeze(0) - sid_start.to(device).long().unsqueeze(1)
        rows, cols = torch.nonzero(k >= 0, as_tuple=True)
        if rows.numel() == 0:
            return logits
        k = k[rows, cols]
        depth = k % self.sid_length
        node = torch.zeros_like(k)
        for step in range(self.sid_length - 1):  # walk the current SID's tokens (≤ L-1 of them)
            inside = depth > step
            token = ids[rows, (cols - depth + step).clamp(0, length - 1)]
            node = torch.where(inside, self._child(t, node, token), node)
        node, eos_ok = self._state(t, node, depth, k // self.sid_length, num_sids, allow_fewer)
        mask = self._allowed_mask(t, node, eos_ok, vocab)
        # Stop constraining after the first EOS or forbidden token of each row.
        actual = ids[rows, cols]
        stops = torch.zeros(batch, length, dtype=torch.long, device=device)
        stops[rows, cols] = (
            ~mask.gather(1, actual.unsqueeze(1)).squeeze(1) | torch.isin(actual, t["eos_token_ids"])
        ).long()
        after_stop = (stops.cumsum(1) - stops)[rows, cols] > 0
        keep = ~after_stop
        rows, cols, mask = rows[keep], cols[keep], mask[keep]
        out = logits.clone()
        out[rows, cols] = logits[rows, cols].masked_fill(~mask, float("-inf"))
        return out

    def valid_next(
        self, prefix_ids: Sequence[int], num_sids: int | None = None, allow_fewer: bool | None = None
    ) -> list[int]:
        """Token ids the trie allows after `prefix_ids` (the SID part so far); [] once it left the trie.

        A readable, one-row view of the same core the processor uses (handy in tests and
        when debugging a tokenizer/index mismatch).
        """
        num_sids = self.num_sids if num_sids is None else num_sids
        allow_fewer = self.allow_fewer if allow_fewer is None else allow_fewer
        prefix = [int(x) for x in prefix_ids]
        for i, token in enumerate(prefix):  # every earlier token must have been allowed too
            if token not in self._allowed_after(prefix[:i], num_sids, allow_fewer):
                return []
            if token in self.eos_token_ids.tolist():
                return []  # finished: nothing follows EOS
        return self._allowed_after(prefix, num_sids, allow_fewer)

    def _allowed_after(self, prefix: list[int], num_sids: int, allow_fewer: bool) -> list[int]:
        t = self._tensors(torch.device("cpu"))
        depth, done = len(prefix) % self.sid_length, len(prefix) // self.sid_length
        node = torch.zeros(1, dtype=torch.long)
        for token in prefix[len(prefix) - depth :]:
            node = self._child(t, node, torch.tensor([token]))
        node, eos_ok = self._state(
            t, node, torch.tensor([depth]), torch.tensor([done]), num_sids, allow_fewer
        )
        mask = self._allowed_mask(t, node, eos_ok, self.key_base)
        return torch.nonzero(mask[0]).squeeze(1).tolist()

    def memory_bytes(self) -> int:
        """Bytes held by the trie's tensors (one device copy)."""
        names = ("edge_keys", "edge_child", "edge_token", "child_start", "child_count")
        return sum(getattr(self, n).element_size() * getattr(self, n).numel() for n in names)

    def __repr__(self) -> str:
        return (
            f"SIDTrie({self.n_sids} SIDs of {self.sid_length} tokens, {self.n_nodes} nodes, "
            f"{self.memory_bytes() / 2**20:.1f} MiB)"
        )


def sid_token_sequences(index: ItemIndex, tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """(n_items, L) token ids of every item's SID, built from per-level lookup tables.

    Tokenising a million SID texts one by one is slow; mapping each itemic token to its id
    once is not. A rendered SID is checked to tokenise to the same ids.
    """
    if len(index) == 0:
        raise ValueError("the item index is empty: no SIDs to build a trie from")
    fmt = index.sid_format
    needed = index.itemic_tokens()
    ids = {t: _single_token_id(tokenizer, t) for t in needed}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise ValueError(
            f"{len(missing)} itemic token(s) of the item index are not single tokens of the tokenizer, "
            f"e.g. {missing[:5]}: the index and the tokenizer do not match "
            "(add them with onereason.vocab.add_itemic_tokens, or load the index saved with this model)"
        )
    columns = []
    if fmt.begin:
        columns.append(np.full(len(index), ids[fmt.begin], dtype=np.int64))
    for level in range(index.n_levels):
        codes = index.codes[:, level]
        lookup = np.full(int(codes.max()) + 1 if len(codes) else 1, -1, dtype=np.int64)
        used = np.unique(codes)
        lookup[used] = [ids[fmt.token(level, c)] for c in used]
        columns.append(lookup[codes])
    if fmt.end:
        columns.append(np.full(len(index), ids[fmt.end], dtype=np.int64))
    sequences = np.stack(columns, axis=1)
    # The tokenizer must produce exactly these ids for a rendered SID (no stray spaces).
    sample = index.item_ids[0]
    got = tokenizer(index.sid_text(sample), add_special_tokens=False)["input_ids"]
    if list(got) != sequences[0].tolist():
        raise ValueError(
            f"the tokenizer splits {index.sid_text(sample)!r} into {got}, expected {sequences[0].tolist()}"
        )
    return sequences


class SIDLogitsProcessor(LogitsProcessor):
    """Holds `generate` to the trie: each new token continues a valid SID; EOS only after
    `num_sids` complete SIDs (or after at least one, with `allow_fewer`).

    The trie position is recomputed every step from the tokens after `prompt_length` (the
    padded prompt width: with left padding every row's answer starts there), so beam
    reordering needs no bookkeeping. Rows that already emitted EOS (or, never under this
    processor, left the trie) may only emit EOS, which keeps sampling free of all -inf rows.
    """

    def __init__(self, trie: SIDTrie, prompt_length: int, num_sids: int = 1, allow_fewer: bool = False):
        if num_sids < 1:
            raise ValueError(f"num_sids must be at least 1, got {num_sids}")
        self.trie = trie
        self.prompt_length = int(prompt_length)
        self.num_sids = num_sids
        self.allow_fewer = allow_fewer

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        trie = self.trie
        generated = input_ids[:, self.prompt_length :]
        if input_ids.shape[1] < self.prompt_length:
            raise ValueError(
                f"input has {input_ids.shape[1]} tokens, fewer than prompt_length={self.prompt_length}"
            )
        t = trie._tensors(scores.device)
        n = generated.shape[1]
        depth, done = n % trie.sid_length, n // trie.sid_length
        rows = scores.shape[0]
        node = torch.zeros(rows, dtype=torch.long, device=scores.device)
        for step in range(depth):
            node = trie._child(t, node, generated[:, n - depth + step])
        stopped = torch.isin(generated, t["eos_token_ids"]).any(dim=1) | (node < 0)
        depth_t = torch.full_like(node, depth)
        node, eos_ok = trie._state(
            t, node, depth_t, torch.full_like(node, done), self.num_sids, self.allow_fewer
        )
        node = torch.where(stopped, torch.full_like(node, -1), node)
        mask = trie._allowed_mask(t, node, eos_ok | stopped, scores.shape[-1])
        return scores.masked_fill(~mask, float("-inf"))


def _single_token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    """The id of `token` if the tokenizer has it as one token, else None."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if (
        token_id is None
        or token_id == tokenizer.unk_token_id
        or tokenizer.convert_ids_to_tokens(token_id) != token
    ):
        return None
    return int(token_id)
