"""Sequence-level rows: built for every window of a user's training sequence, the loss on every
next item's SID and on nothing else, and SFT trains on them with validation by ranking. Pair
rows: one per training transition and history item of the window, that item alone -> the next."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch
from datasets import load_from_disk

from data_builders.build import BuildDataConfig, build_data
from data_builders.tasks.build import main as build_tasks_main
from data_builders.tasks.recommendation import RecRow, sequence_window_ends
from onereason.item_index import ItemIndex
from onereason.sequence_loss import IGNORE_INDEX, sid_token_ids, tokenize_row

MIXTURE = """
seed: 0
tasks:
  - {task: rec_seq, mode: no_think, weight: 1.0}
  - {task: rec_pair, mode: no_think, weight: 1.0}
  - {task: rec_sid, mode: no_think, weight: 1.0}
"""


def rows_of(user: str, sequence: list[int], max_history: int) -> list[RecRow]:
    """Leave-one-out train rows of one user: every prefix -> the next item, history capped."""
    return [
        RecRow(f"train:{user}:{j}", user, sequence[max(0, j - max_history) : j], [], [sequence[j]])
        for j in range(1, len(sequence))
    ]


def test_window_ends_cover_every_next_item_once():
    short = rows_of("a", list(range(5)), max_history=20)
    long = rows_of("b", list(range(100, 150)), max_history=20)
    ends = sequence_window_ends(short + long)
    assert ends[: len(short)] == [False, False, False, True]  # one window: the whole sequence
    chosen = [r for r, end in zip(long, ends[len(short) :]) if end]
    covered = sorted(i for r in chosen for i in r.history[1:] + r.targets)
    # Every item but the first appears as a next item exactly once (a window's first history
    # item has no context; the window before it ends on it as its target).
    assert covered == list(range(101, 150))


@pytest.fixture(scope="module", params=["numbered", "back_to_back"])
def sequence_build(request, tmp_path_factory, make_tiny_model):
    """Tasks with numbered history lines, and with bare SIDs written back to back."""
    from test_tasks_build import synthetic_index

    root = tmp_path_factory.mktemp(request.param)
    options = {"num_users": 60, "num_items": 120, "seed": 1}
    build_data(BuildDataConfig(source="synthetic", source_options=options, out_dir=str(root / "data")))
    index = synthetic_index(pq.read_table(root / "data" / "items.parquet"))
    index.save(root / "item_index.json")
    (root / "mixture.yaml").write_text(MIXTURE)
    argv = ["--data_dir", str(root / "data"), "--item_index", str(root / "item_index.json")]
    argv += ["--out_dir", str(root / "tasks"), "--mixture", str(root / "mixture.yaml")]
    argv += ["--history_text", "none", "--system_prompt", "false", "--max_history", "8"]
    argv += ["--history_numbered", str(request.param == "numbered").lower()]
    assert build_tasks_main(argv) == 0
    model = make_tiny_model(itemic_tokens=index.itemic_tokens())
    return root, index, model


def train_only_rows(root, task: str):
    """The rows of a train-only `task` (checked absent from validation and test) and the per-target rows."""
    ds = load_from_disk(str(root / "tasks"))
    for split in ("validation", "test"):
        assert task not in set(ds[split]["task"])
    rows_of = lambda name: ds["train"].filter(lambda t: t == name, input_columns="task")  # noqa: E731
    return rows_of(task), rows_of("rec_sid")


def test_sequence_rows_only_train_one_per_window(sequence_build):
    root, _, _ = sequence_build
    seq, per_target = train_only_rows(root, "rec_seq")
    assert 0 < len(seq) < len(per_target)
    assert len(set(seq["user_id"])) == len(set(per_target["user_id"]))  # every user has a window
    # A sequence row is the per-target row of its window's last target, byte for byte.
    by_key = {(r["user_id"], tuple(r["history_items"]), tuple(r["target_items"])): r for r in per_target}
    for row in seq.select(range(20)):
        twin = by_key[(row["user_id"], tuple(row["history_items"]), tuple(row["target_items"]))]
        assert row["prompt"] == twin["prompt"] and row["completion"] == twin["completion"]
    stats = json.loads((root / "tasks" / "stats.json").read_text())
    assert any(k.startswith("train/rec_seq:inside_a_longer_window") for k in stats["ineligible"])


def test_pair_rows_show_the_last_item_of_every_train_row(sequence_build):
    root, index, _ = sequence_build
    pairs, per_target = train_only_rows(root, "rec_pair")
    assert len(pairs) == len(per_target)  # one pair row per training transition
    twins: dict[tuple, list[dict]] = {}  # a user may repeat a transition: every row that has it
    for r in per_target:
        twins.setdefault((r["user_id"], r["history_items"][-1], tuple(r["target_items"])), []).append(r)

    def cut_to_last(row: dict, twin: dict) -> bool:
        """`row` is `twin` with its history cut to the last item: one SID, the same words."""
        text, twin_text = row["prompt"][-1]["content"].split("\n"), twin["prompt"][-1]["content"].split("\n")
        shown, last = "\n".join(text[1:-1]), index.sid_text(row["history_items"][0])
        others = [index.sid_text(i) for i in twin["history_items"] if i != row["history_items"][0]]
        return (
            (text[0], text[-1]) == (twin_text[0], twin_text[-1])
            and shown.count(last) == 1
            and not any(sid in shown for sid in others)
            and row["completion"] == twin["completion"]
        )

    for row in pairs.select(range(30)):
        assert len(row["history_items"]) == 1 and row["mode"] == "no_think"
        key = (row["user_id"], row["history_items"][0], tuple(row["target_items"]))
        assert any(cut_to_last(row, twin) for twin in twins[key])


def pair_window_argv(root) -> list[str]:
    """`build-tasks` arguments of the fixture's data into `tasks-w2`, without a pair window yet."""
    argv = ["--data_dir", str(root / "data"), "--item_index", str(root / "item_index.json")]
    argv += ["--out_dir", str(root / "tasks-w2"), "--mixture", str(root / "mixture.yaml")]
    return argv + ["--history_text", "none", "--system_prompt", "false", "--max_history", "8"]


def pair_window_build(root):
    """The fixture's data built with `pair_window: 2` (once per fixture)."""
    if not (root / "tasks-w2" / "dataset_dict.json").exists():
        assert build_tasks_main([*pair_window_argv(root), "--pair_window", "2"]) == 0
    return root / "tasks-w2"


def test_a_pair_window_adds_a_row_from_each_earlier_item(sequence_build):
    """`pair_window: 2`: besides the last item, the second-to-last alone -> the same next item."""
    root, _, _ = sequence_build
    argv = pair_window_argv(root)
    ds = load_from_disk(str(pair_window_build(root)))["train"]
    pairs = ds.filter(lambda t: t == "rec_pair", input_columns="task")
    per_target = ds.filter(lambda t: t == "rec_sid", input_columns="task")
    expected = Counter()
    for r in per_target:
        for item in r["history_items"][-2:]:
            expected[(r["user_id"], item, tuple(r["target_items"]))] += 1
    got = Counter((r["user_id"], r["history_items"][0], tuple(r["target_items"])) for r in pairs)
    assert all(len(r["history_items"]) == 1 for r in pairs)
    assert got == expected  # one row per (transition, item of the window), nothing else
    assert len(pairs) > len(per_target)  # the windows of two items added rows
    with pytest.raises(SystemExit, match="pair_window must be >= 1"):  # one line, no traceback
        build_tasks_main([*argv, "--pair_window", "0"])


def test_pair_rows_refuse_a_trace():
    from data_builders.tasks.mixture import parse_mixture

    with pytest.raises(ValueError, match="rec_pair.*no_think"):
        parse_mixture({"tasks": [{"task": "rec_pair", "mode": "think", "weight": 1.0}]})


def test_loss_is_on_every_next_sid_and_nothing_else(sequence_build):
    from onereason.modeling import load_tokenizer

    root, index, model = sequence_build
    tok = load_tokenizer(model)
    itemic, first = sid_token_ids(index, tok)
    train = load_from_disk(str(root / "tasks"))["train"]
    rows = [r for r in train.select(range(200)) if r["task"] == "rec_seq" and len(r["history_items"]) >= 3]
    assert rows
    for row in rows[:10]:
        out = tokenize_row(row, tok, itemic, first)
        ids, labels = out["input_ids"], out["labels"]
        assert len(ids) == len(labels)
        # Token by token: a label is its input token on itemic tokens after the first SID, -100 elsewhere.
        first_sid = index.sid_text(row["history_items"][0])
        first_ids = tok.encode(first_sid, add_special_tokens=False)
        start = next(p for p in range(len(ids)) if ids[p : p + len(first_ids)] == first_ids)
        for pos, (tok_id, label) in enumerate(zip(ids, labels)):
            if tok_id in itemic and pos >= start + len(first_ids):
                assert label == tok_id, (pos, tok.decode([tok_id]))
            else:
                assert label == IGNORE_INDEX, (pos, tok.decode([tok_id]))
        # What carries the loss is exactly the SIDs of the history's next items, then the target's.
        learned = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])
        expected = "".join(index.sid_text(i) for i in row["history_items"][1:] + row["target_items"])
        assert learned == expected


def test_per_target_rows_keep_trl_completion_labels(sequence_build):
    from onereason.modeling import load_tokenizer

    root, index, model = sequence_build
    tok = load_tokenizer(model)
    itemic, first = sid_token_ids(index, tok)
    row = next(r for r in load_from_disk(str(root / "tasks"))["train"] if r["task"] == "rec_sid")
    out = tokenize_row(row, tok, itemic, first)
    learned = tok.decode([t for t, lab in zip(out["input_ids"], out["labels"]) if lab != IGNORE_INDEX])
    assert learned.startswith("<think>") and index.sid_text(row["target_items"][0]) in learned
    assert tok.decode(out["input_ids"]).endswith(learned)


def test_sft_on_sequence_rows_validates_by_ranking(sequence_build, tmp_path):
    from onereason.train import main as train_main

    root, index, model = sequence_build
    out = tmp_path / "sft"
    argv = [
        "--config", "recipes/tiny/sft.yaml",
        "--model_name_or_path", str(model),
        "--dataset_path", str(root / "tasks"),
        "--item_index", str(root / "item_index.json"),
        "--tasks", "rec_seq",
        "--output_dir", str(out),
        "--max_steps", "6",
        "--per_device_train_batch_size", "8",
        "--eval_strategy", "steps", "--eval_steps", "3",
        "--save_strategy", "steps", "--save_steps", "3",
        "--load_best_model_at_end", "true",
        "--metric_for_best_model", "eval_ndcg@10",
        "--ranking_eval_users", "16",
        "--ranking_eval_beams", "10",
        "--early_stopping_patience", "5",
        "--batches_by_length", str("back_to_back" in root.name).lower(),
    ]  # fmt: skip
    assert train_main(argv) in (0, None)
    history = json.loads((out / "onereason_history.json").read_text())
    record = history[-1]
    assert record["stage"] == "sft"
    assert [p["step"] for p in record["validation_curve"]] == [3, 6]
    assert all(0.0 <= p["eval_hit@10"] <= 1.0 for p in record["validation_curve"])
    assert 0 < record["loss_tokens_per_epoch"] < record["tokens_per_epoch"]
    assert record["best_checkpoint"] is not None
    assert ItemIndex.load(out / "item_index.json").item_ids == index.item_ids


def test_back_to_back_history_is_bare_sids(sequence_build):
    root, index, _ = sequence_build
    row = next(r for r in load_from_disk(str(root / "tasks"))["train"] if r["task"] == "rec_seq")
    text = row["prompt"][-1]["content"]
    shown = "".join(index.sid_text(i) for i in row["history_items"])
    if "back_to_back" in root.name:
        assert shown in text and "1. " not in text
    else:
        assert index.sid_text(row["history_items"][0]) in text.split("\n")[1] and "1. " in text


def test_length_buckets_batch_similar_rows_in_shuffled_order():
    from onereason.stages.sft import LengthBucketSampler

    lengths = [(7 * k) % 101 for k in range(1000)]
    sampler = LengthBucketSampler(lengths, batch_size=10, seed=0, mega_batches=16)
    order = list(sampler)
    assert sorted(order) == list(range(1000))  # every row once
    batches = [order[k : k + 10] for k in range(0, 1000, 10)]
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert sum(spread) / len(spread) < 10  # random batches of 10 would spread ~80
    longest = [max(lengths[i] for i in b) for b in batches]
    # No walk from long to short rows: the first and second halves hold long batches alike.
    assert abs(sum(longest[:50]) - sum(longest[50:])) < 0.2 * sum(longest)
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new order every epoch


def test_model_head_loss_equals_trl_fused_head_loss(sequence_build, tmp_path):
    """fused_lm_head: false trains on the same loss as TRL's chunked head and the model's full
    logits (value and gradients), with logits at the labelled positions only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from onereason.sequence_loss import tokenize_with_sequence_loss
    from onereason.stages.sft import OneReasonSFTTrainer

    root, index, model_dir = sequence_build
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = load_from_disk(str(root / "tasks"))["train"]
    rows = tokenize_with_sequence_loss(rows.select(range(min(24, len(rows)))), tokenizer, index)
    args = SFTConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=8,
        padding_free=False, max_length=None,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    trainer = OneReasonSFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert (batch["labels"] != IGNORE_INDEX).any() and (batch["labels"] == IGNORE_INDEX).any()
    with torch.no_grad():
        fused = trainer.compute_loss(model, dict(batch))
        trainer.fused_lm_head = False
        plain = trainer.compute_loss(model, dict(batch))
    assert torch.isfinite(plain) and plain.item() > 0
    assert abs(plain.item() - fused.item()) < 1e-4 * fused.item()

    labelled = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    assert outputs.logits.shape == (labelled, model.config.vocab_size)  # nothing projected that has no label
    grads = torch.autograd.grad(loss, list(model.parameters()))
    full = model(**batch, use_cache=False)  # every position's logits, transformers' loss
    assert (
        full.logits.shape[1] == batch["input_ids"].shape[1]
        and full.logits.shape[1] * len(full.logits) > labelled
    )
    assert abs(full.loss.item() - loss.item()) < 1e-5 * loss.item()
    for ours, theirs in zip(grads, torch.autograd.grad(full.loss, list(model.parameters()))):
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-4)


def test_the_one_item_views_of_a_row_are_the_prompts_of_its_pair_rows(sequence_build):
    """`history_viewer(index, 1, ..., n_views=2)` cuts a prompt's history to its last item, then
    to the one before it, as the task build renders it: with `pair_window: 2` the two views of
    every per-target train row are the prompts of its two pair rows."""
    from evaluation.protocols import EvalExample, history_viewer

    root, index, _ = sequence_build
    tasks = pair_window_build(root)
    train = load_from_disk(str(tasks))["train"]
    views = history_viewer(index, 1, tasks / "config.yaml", root / "data", n_views=2)
    prompts: dict[tuple, list] = {}
    for r in train.filter(lambda t: t == "rec_pair", input_columns="task"):
        prompts.setdefault((r["user_id"], r["history_items"][0], tuple(r["target_items"])), []).append(
            r["prompt"]
        )
    per_target = train.filter(lambda t: t == "rec_sid", input_columns="task")
    checked = 0
    for n, r in enumerate(per_target.select(range(40))):
        if len(r["history_items"]) < 2:
            continue
        ex = EvalExample(
            f"{r['user_id']}#{n}", r["user_id"], r["prompt"], r["target_items"], r["history_items"]
        )
        last, before = views(ex)
        assert r["prompt"] != last and (last != before) == (r["history_items"][-1] != r["history_items"][-2])
        assert last in prompts[(r["user_id"], r["history_items"][-1], tuple(r["target_items"]))]
        assert before in prompts[(r["user_id"], r["history_items"][-2], tuple(r["target_items"]))]
        checked += 1
    assert checked >= 10
    stranger = EvalExample("x#0", "x", r["prompt"], r["target_items"], list(reversed(r["history_items"])))
    with pytest.raises(ValueError, match="does not show the history"):
        views(stranger)


@torch.no_grad()
def test_a_viewed_search_scores_the_prompt_and_its_view_together(sequence_build):
    """With `view_weight` [w0, w1] each beam's score is log p(SID | prompt) + w0 log p(SID | last
    item) + w1 log p(SID | the item before it), teacher-forced, and the ranker's records carry
    exactly those beams."""
    from evaluation.generate import BeamRanker, DecodingConfig
    from evaluation.protocols import examples_from_tasks, history_viewer
    from onereason.modeling import load_model_and_tokenizer

    root, index, model_path = sequence_build
    model, tokenizer = load_model_and_tokenizer(model_path, dtype=torch.float32)
    model.eval()
    views = history_viewer(index, 1, root / "tasks" / "config.yaml", root / "data", n_views=2)
    examples = [ex for ex in examples_from_tasks(root / "tasks", "test") if len(ex.history) > 1][:4]
    cfg = DecodingConfig(num_beams=5, batch_size=4, view_weight=[0.5, 0.25])
    ranker = BeamRanker(model, tokenizer, index, cfg, history_view=views)
    empty = ranker.decoder.empty_block().ids
    heads = [
        tuple(ranker.prompt_ids(m, "no_think") + empty for m in [ex.messages, *views(ex)]) for ex in examples
    ]
    new, scores = ranker.decoder.sid_beams(model, heads, 5, view_weights=cfg.view_weights)

    def log_p(head: list[int], answer: list[int]) -> float:
        ids = torch.tensor([head + answer])
        logits = model(ids).logits[0, len(head) - 1 : -1]
        return torch.log_softmax(logits.float(), -1).gather(-1, ids[0, len(head) :, None]).sum().item()

    for u, (full, last, before) in enumerate(heads):
        for b in range(5 * u, 5 * u + 5):
            answer = new[b][: next(i for i, t in enumerate(new[b]) if t in ranker.eos_ids) + 1]
            fused = log_p(full, answer) + 0.5 * log_p(last, answer) + 0.25 * log_p(before, answer)
            assert scores[b] == pytest.approx(fused, abs=1e-4)
    records = ranker.rank(examples, "no_think")
    for u, record in enumerate(records):
        assert record["scores"] == pytest.approx(scores[5 * u : 5 * u + 5], abs=1e-5)
        assert record["ranked_sids"] == [ranker._tokens_text(t) for t in new[5 * u : 5 * u + 5]]
    plain = BeamRanker(model, tokenizer, index, DecodingConfig(num_beams=5, batch_size=4)).rank(
        examples, "no_think"
    )
    assert [r["scores"] for r in plain] != [r["scores"] for r in records]
    with pytest.raises(ValueError, match="history_view"):
        BeamRanker(model, tokenizer, index, cfg)


def test_a_view_of_a_plain_prompt_is_the_plain_prompt_of_its_last_items():
    """Examples from split rows (numbered SIDs, no task build): a view renumbers the cut history
    as `plain_prompt` would, and items the index lacks stay out of both."""
    from test_sid_beam import small_index

    from evaluation.protocols import examples_from_rows, history_viewer, plain_prompt

    index = small_index(10)
    rows = [{"user_id": "u", "history": ["i1", "gone", "i2", "i3"], "target": "i4"}]
    (ex,) = examples_from_rows(rows, index)
    sids = lambda ids: [index.sid_text(i) for i in ids]  # noqa: E731
    assert history_viewer(index, 2)(ex) == [plain_prompt(sids(["i2", "i3"]))]
    assert history_viewer(index, 9)(ex) == [ex.messages] == [plain_prompt(sids(["i1", "i2", "i3"]))]
    # each further view ends one item earlier; a history too short for one shows its first items
    assert history_viewer(index, 1, n_views=4)(ex) == [
        plain_prompt(sids([i])) for i in ["i3", "i2", "i1", "i1"]
    ]
    assert history_viewer(index, 2, n_views=3)(ex) == [
        plain_prompt(sids(pair)) for pair in (["i2", "i3"], ["i1", "i2"], ["i1", "i2"])
    ]
