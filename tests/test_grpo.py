"""GRPO with constrained rollouts: on-policy log-probs, learning, the tiny recipe, resuming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from toy_world import toy_index, toy_model, toy_rows, write_toy_dataset
from trl import GRPOConfig

from onereason.rewards import RewardContext, build_rewards
from onereason.rl.grpo_trainer import ConstrainedGRPOTrainer
from onereason.stages.common import HISTORY_FILE, ITEM_INDEX_FILE

REPO = Path(__file__).resolve().parents[1]


def make_trainer(index, model_dir, out, rewards=("hit",), rows=64, think_share=0.5, **config):
    from onereason.modeling import load_model_and_tokenizer
    from onereason.trie import SIDTrie

    model, tokenizer = load_model_and_tokenizer(model_dir, dtype="float32")
    data = datasets.Dataset.from_list(toy_rows(index, rows, think_share=think_share)).remove_columns(
        ["completion"]
    )
    funcs, weights = build_rewards(list(rewards), RewardContext(index, tokenizer))
    defaults = dict(
        output_dir=str(out), use_cpu=True, bf16=False, activation_checkpointing=False, report_to=[],
        per_device_train_batch_size=8, num_generations=4, max_completion_length=40, max_steps=1,
        learning_rate=1e-3, logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True,
    )  # fmt: skip
    args = GRPOConfig(**{**defaults, **config, "reward_weights": weights})
    return ConstrainedGRPOTrainer(
        model=model, reward_funcs=funcs, args=args, train_dataset=data, processing_class=tokenizer,
        trie=SIDTrie.from_index(index, tokenizer), think_budget=8,
    )  # fmt: skip


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    index = toy_index(8, (2, 2, 2))
    return index, toy_model(tmp_path_factory.mktemp("grpo-model"), index)


def direct_constrained_logps(
    model, tokenizer, index, prompt_ids, prompt_mask, completion_ids, completion_mask, starts
):
    """Log-probs by hand: softmax over the whole vocabulary in the think block, over the SID
    continuations (found by scanning every item's SID tokens) from `sid_start` on."""
    sids = [tokenizer(index.sid_text(i), add_special_tokens=False)["input_ids"] for i in index.item_ids]
    ids = torch.cat([prompt_ids, completion_ids], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.cat([prompt_mask, completion_mask], 1)).logits
    logits = logits[:, prompt_ids.size(1) - 1 : -1].float()
    out = torch.zeros(completion_ids.shape)
    for b in range(ids.size(0)):
        for t in range(int(completion_mask[b].sum())):
            row = logits[b, t]
            if t >= starts[b]:
                prefix = completion_ids[b, starts[b] : t].tolist()
                allowed = {
                    s[len(prefix)] for s in sids if s[: len(prefix)] == prefix and len(s) > len(prefix)
                }
                if prefix in sids:
                    allowed.add(tokenizer.eos_token_id)
                keep = torch.tensor(sorted(allowed))
                masked = torch.full_like(row, float("-inf"))
                masked[keep] = row[keep]
                row = masked
            out[b, t] = torch.log_softmax(row, -1)[completion_ids[b, t]]
    return out


def test_loss_logps_are_the_constrained_logps(small_world, tmp_path):
    index, model_dir = small_world
    trainer = make_trainer(index, model_dir, tmp_path, rows=8)
    trainer.model.train()
    batch = [row for row in trainer.train_dataset.select(range(4)) for _ in range(4)]
    torch.manual_seed(0)
    scored = trainer._generate_and_score_completions(batch)
    completion_ids, completion_mask = scored["completion_ids"], scored["completion_mask"]
    ids = torch.cat([scored["prompt_ids"], completion_ids], 1)
    mask = torch.cat([scored["prompt_mask"], completion_mask], 1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, completion_ids.size(1)
        )
    gen = trainer.rollout_generator
    starts = [
        next(i for i, t in enumerate(row.tolist()) if t == gen.think_close_id) + 1 + len(gen.answer_sep_ids)
        for row in completion_ids
    ]
    expected = direct_constrained_logps(
        trainer.model, trainer.processing_class, index, scored["prompt_ids"], scored["prompt_mask"],
        completion_ids, completion_mask, starts,
    )  # fmt: skip
    scored_tokens = (completion_mask * scored["tool_mask"]).bool()
    assert torch.allclose(logps[scored_tokens], expected[scored_tokens], atol=1e-5)
    # The constraint matters: at SID positions the renormalised log-prob beats the free one.
    with torch.no_grad():
        free = torch.log_softmax(
            trainer.model(input_ids=ids, attention_mask=mask).logits[:, -completion_ids.size(1) - 1 : -1], -1
        )
    free = free.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    sid_part = torch.zeros_like(scored_tokens)
    for b, s in enumerate(starts):
        sid_part[b, s:] = True
    sid_part &= scored_tokens
    assert (logps[sid_part] >= free[sid_part] - 1e-6).all() and (
        logps[sid_part] > free[sid_part] + 1e-3
    ).any()
    # Forced tokens stay out of the loss; sampled think tokens are in it.
    assert scored["tool_mask"].sum() < completion_mask.sum()


def test_grpo_with_the_hit_reward_raises_the_mean_reward(tmp_path):
    """Learning test: 4 items, the prompt names the wanted item's cue; fixed seed, ~20 s on 2 cores."""
    index = toy_index(4, (2, 2, 2))
    model_dir = toy_model(tmp_path / "model", index)
    torch.manual_seed(0)
    trainer = make_trainer(
        index, model_dir, tmp_path / "out", rows=256, per_device_train_batch_size=32, num_generations=8,
        max_steps=60, lr_scheduler_type="constant",
    )  # fmt: skip
    trainer.train()
    rewards = [h["rewards/hit/mean"] for h in trainer.state.log_history if "rewards/hit/mean" in h]
    first, last = np.mean(rewards[:15]), np.mean(rewards[-15:])
    assert last > first + 0.2, (
        f"hit reward did not rise enough: first 15 steps {first:.2f}, last 15 {last:.2f}"
    )


def test_use_vllm_without_vllm_installed_fails_before_training(small_world, tmp_path):
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    index, model_dir = small_world
    with pytest.raises(ImportError, match="vllm|vLLM"):
        make_trainer(index, model_dir, tmp_path, rows=8, use_vllm=True)


def test_completion_budget_is_checked(small_world, tmp_path):
    index, model_dir = small_world
    with pytest.raises(ValueError, match="max_completion_length=10"):
        make_trainer(index, model_dir, tmp_path, rows=8, max_completion_length=10)


# ---------------------------------------------------------------------------------- the recipe


@pytest.fixture(scope="module")
def recipe_world(tmp_path_factory, small_world):
    index, model_dir = small_world
    root = tmp_path_factory.mktemp("grpo-recipe")
    return {"model": model_dir, "tasks": write_toy_dataset(root / "tasks", index, n_train=32), "index": index}


def run_recipe(world, out, *overrides):
    from onereason.train import main

    argv = [
        "--config", "recipes/tiny/grpo.yaml", "--model_name_or_path", str(world["model"]),
        "--dataset_path", str(world["tasks"]), "--output_dir", str(out), "--logging_steps", "1",
        "--think_budget", "8", "--max_completion_length", "40", *overrides,
    ]  # fmt: skip
    return main(argv)


def test_tiny_recipe_runs_in_beam_mode_and_resumes(recipe_world, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    out = tmp_path / "grpo"
    steps = ["--max_steps", "2", "--save_steps", "1", "--save_total_limit", "3", "--decoding", "beam"]
    run_recipe(recipe_world, out, *steps, "--rewards", "hit", "rank:0.5")
    history = json.loads((out / HISTORY_FILE).read_text())
    assert history[-1]["stage"] == "grpo" and history[-1]["global_step"] == 2
    assert (out / ITEM_INDEX_FILE).is_file() and (out / "model.safetensors").is_file()
    first_run = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert any("rewards/rank/mean" in h for h in first_run)
    # Kill the run after step 1: only checkpoint-1 survives. Relaunching the same command (even
    # with another seed) resumes there: step 1 is kept as it was, only step 2 is trained again.
    shutil.rmtree(out / "checkpoint-2")
    (out / "model.safetensors").unlink()
    run_recipe(recipe_world, out, *steps, "--rewards", "hit", "rank:0.5", "--seed", "1")
    second_run = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    step = lambda log, n: [h for h in log if h.get("step") == n and "loss" in h]  # noqa: E731
    assert step(second_run, 1) == step(first_run, 1)
    assert json.loads((out / HISTORY_FILE).read_text())[-1]["global_step"] == 2


@pytest.mark.parametrize(
    "recipe",
    sorted(
        str(p.relative_to(REPO))
        for pat in ("grpo", "ppo", "unify")
        for p in REPO.glob(f"recipes/*/{pat}.yaml")
    ),
)
def test_rl_recipes_parse(recipe, monkeypatch):
    """Every RL recipe parses into its stage's configs (GPU recipes with the bf16 check relaxed for CPU)."""
    from onereason.train import parse_stage_config

    monkeypatch.chdir(REPO)
    module, configs = parse_stage_config(["--config", recipe, "--bf16", "false", "--use_cpu", "true"])
    assert module.__name__.endswith(Path(recipe).stem)
    if Path(recipe).stem != "unify":
        assert configs[2].rewards, "an RL recipe names its rewards"


# ---------------------------------------------------------------------------------- reward model


def test_a_reward_model_named_in_the_recipe_is_loaded_and_its_scores_become_the_advantages(
    recipe_world, tmp_path, monkeypatch
):
    """`{name: model:<path>}` in a recipe's `rewards:`: GRPO loads the sequence-classification model at
    <path> (and its tokenizer), scores every prompt + completion with it, and the group-normalised
    scores x the entry's weight are the advantages the loss uses."""
    import yaml
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

    from onereason.rl.arguments import build_rl_trainer
    from onereason.train import parse_stage_config

    monkeypatch.chdir(REPO)
    reward_dir = tmp_path / "reward-model"
    torch.manual_seed(0)  # the score head is new: random, so completions get different scores
    AutoModelForSequenceClassification.from_pretrained(recipe_world["model"], num_labels=1).save_pretrained(
        reward_dir
    )
    AutoTokenizer.from_pretrained(recipe_world["model"]).save_pretrained(reward_dir)
    recipe = yaml.safe_load((REPO / "recipes/tiny/grpo.yaml").read_text())
    recipe["rewards"] = [{"name": f"model:{reward_dir}", "weight": 0.5}]
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(recipe))
    _, configs = parse_stage_config([
        "--config", str(tmp_path / "grpo.yaml"), "--model_name_or_path", str(recipe_world["model"]),
        "--dataset_path", str(recipe_world["tasks"]), "--output_dir", str(tmp_path / "out"),
        "--think_budget", "8", "--max_completion_length", "40", "--num_generations", "4",
        "--per_device_train_batch_size", "8", "--report_to", "none",
    ])  # fmt: skip
    trainer, _, _, _ = build_rl_trainer(ConstrainedGRPOTrainer, *configs)
    (reward_model,) = trainer.reward_funcs
    assert isinstance(reward_model, PreTrainedModel) and reward_model.config.num_labels == 1
    assert Path(reward_model.name_or_path) == reward_dir
    assert trainer.reward_weights.tolist() == [0.5]
    seen = []
    reward_model.register_forward_hook(
        lambda module, args, kwargs, out: seen.append((kwargs["input_ids"], out.logits[:, 0].clone())),
        with_kwargs=True,
    )
    trainer.model.train()
    batch = [row for row in trainer.train_dataset.select(range(2)) for _ in range(4)]
    torch.manual_seed(0)
    scored = trainer._generate_and_score_completions(batch)
    ((input_ids, scores),) = seen
    assert scores.shape == (8,) and scores.std() > 0, "the reward model scored each completion"
    texts = trainer.reward_processing_classes[0].batch_decode(input_ids)
    prompts = [row["prompt"][0]["content"] for row in batch]
    completions = trainer.processing_class.batch_decode(scored["completion_ids"], skip_special_tokens=True)
    for text, prompt, completion in zip(texts, prompts, completions):
        assert prompt in text and completion.strip()[-20:] in text, "it read the prompt and the completion"
    groups = 0.5 * scores.view(2, 4)
    expected = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)
    assert torch.allclose(scored["advantages"], expected.flatten(), atol=1e-5)
