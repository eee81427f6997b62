"""Sequence-level training rows: one row teaches every next item of a user's sequence.

A `rec_seq` row looks exactly like a non-thinking `rec_sid` row (the history as SIDs, then
the next item's SID as the answer), but SFT puts the loss on *every* SID in it: each history
item is predicted from the items before it, and the answer from the whole history. That is
what SASRec-style models learn from each sequence, in the itemic-token text the model reads
at inference, for the price of one row; a per-target row teaches one item for the same tokens.

The loss covers exactly the itemic tokens of those SIDs (boundary tokens included, the
history's first SID excluded: nothing comes before it) and nothing else: no numbering, no
question, no chat scaffolding, no think block, no end-of-turn token. SIDs written back to
back (a history with `numbered: false`) are told apart by their first token.

Other rows of a mixed dataset get TRL's own labels: the completion (or, with
`completion_only_loss: false`, every token).
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets

# Tasks whose rows train on every SID (data_builders.tasks.recommendation builds them).
SEQUENCE_TASKS = ("rec_seq",)
IGNORE_INDEX = -100


def itemic_runs(input_ids: Sequence[int], itemic_ids: set[int]) -> list[tuple[int, int]]:
    """[start, end) spans of consecutive itemic tokens: one SID each (or SIDs written back to back)."""
    runs, start = [], None
    for pos, tok in enumerate(input_ids):
        if tok in itemic_ids:
            if start is None:
                start = pos
        elif start is not None:
            runs.append((start, pos))
            start = None
    if start is not None:
        runs.append((start, len(input_ids)))
    return runs


def sid_spans(input_ids: Sequence[int], itemic_ids: set[int], first_ids: set[int]) -> list[tuple[int, int]]:
    """[start, end) of every SID: itemic runs, cut again wherever a SID's first token starts one."""
    spans = []
    for start, end in itemic_runs(input_ids, itemic_ids):
        cuts = [p for p in range(start + 1, end) if input_ids[p] in first_ids]
        bounds = [start, *cuts, end]
        spans += list(zip(bounds, bounds[1:]))
    return spans


def sequence_labels(input_ids: Sequence[int], itemic_ids: set[int], first_ids: set[int]) -> list[int]:
    """Labels with the loss on every SID but the first, -100 everywhere else."""
    labels = [IGNORE_INDEX] * len(input_ids)
    for start, end in sid_spans(input_ids, itemic_ids, first_ids)[1:]:
        labels[start:end] = input_ids[start:end]
    return labels


def sid_token_ids(index, tokenizer) -> tuple[set[int], set[int]]:
    """The ids of every itemic token, and of the tokens a SID starts with (begin, else level 0)."""
    itemic = set(tokenizer.convert_tokens_to_ids(index.itemic_tokens()))
    fmt = index.sid_format
    first = (
        [fmt.begin]
        if fmt.begin
        else [t for t in index.itemic_tokens() if t.startswith(f"<{fmt.prefixes[0]}_")]
    )
    return itemic, set(tokenizer.convert_tokens_to_ids(first))


def _ids(encoded) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def tokenize_row(
    row: dict, tokenizer, itemic_ids: set[int], first_ids: set[int], completion_only_loss: bool = True
) -> dict:
    """`input_ids` and `labels` of one conversational prompt-completion row, as TRL tokenizes it."""
    full = _ids(tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True))
    if row.get("task") in SEQUENCE_TASKS:
        return {"input_ids": full, "labels": sequence_labels(full, itemic_ids, first_ids)}
    prompt = _ids(tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True))
    split = 0
    while split < min(len(prompt), len(full)) and prompt[split] == full[split]:
        split += 1  # where prompt and prompt+completion diverge (TRL's rule)
    labels = list(full)
    if completion_only_loss:
        labels[:split] = [IGNORE_INDEX] * split
    return {"input_ids": full, "labels": labels}


def has_sequence_rows(data: datasets.Dataset) -> bool:
    return "task" in data.column_names and any(t in SEQUENCE_TASKS for t in set(data.unique("task")))


def tokenize_with_sequence_loss(
    data: datasets.Dataset, tokenizer, index, completion_only_loss: bool = True
) -> datasets.Dataset:
    """The dataset as `input_ids` + `labels` (TRL trains on such rows as they are)."""
    itemic_ids, first_ids = sid_token_ids(index, tokenizer)
    return data.map(
        tokenize_row,
        fn_kwargs={
            "tokenizer": tokenizer,
            "itemic_ids": itemic_ids,
            "first_ids": first_ids,
            "completion_only_loss": completion_only_loss,
        },
        remove_columns=data.column_names,
        desc="tokenizing (loss on every SID of sequence rows)",
    )


def label_tokens(data: datasets.Dataset) -> int:
    """Tokens that carry a loss (the count a report states per epoch)."""
    return sum(sum(1 for x in row if x != IGNORE_INDEX) for row in data["labels"])
