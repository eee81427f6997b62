"""PPO on constrained rollouts: GAE by hand, a critic that learns, the tiny recipe."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from toy_world import toy_index, toy_model, toy_rows, write_toy_dataset
from trl import GRPOConfig

from onereason.rewards import RewardContext, build_rewards
from onereason.rl.ppo_trainer import ConstrainedPPOTrainer, gae, masked_whiten, place_final_reward
from onereason.stages.common import HISTORY_FILE


def test_gae_matches_a_hand_computation_and_skips_masked_tokens():
    values = torch.tensor([[0.5, 0.2, 9.0, 0.4, 0.0]])
    mask = torch.tensor([[1, 1, 0, 1, 0]])  # position 2 forced, position 4 padding
    rewards = place_final_reward(torch.tensor([1.0]), mask)
    assert rewards.tolist() == [[0.0, 0.0, 0.0, 1.0, 0.0]]
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma, lam)
    # Scored chain: v = [0.5, 0.2, 0.4], reward 1 at the end, episode ends after it.
    d3 = 1.0 - 0.4
    d1 = 0.0 + gamma * 0.4 - 0.2
    d0 = 0.0 + gamma * 0.2 - 0.5
    a3 = d3
    a1 = d1 + gamma * lam * a3
    a0 = d0 + gamma * lam * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, 0.0, a3, 0.0])
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.2, 0.0, a3 + 0.4, 0.0])


def test_gae_with_gamma_and_lambda_one_is_reward_minus_value():
    values = torch.tensor([[0.1, 0.3, 0.6]])
    mask = torch.ones(1, 3, dtype=torch.long)
    adv, ret = gae(place_final_reward(torch.tensor([2.0]), mask), values, mask, 1.0, 1.0)
    assert adv[0].tolist() == pytest.approx([1.9, 1.7, 1.4])
    assert ret[0].tolist() == pytest.approx([2.0, 2.0, 2.0])


def test_whitening_uses_only_scored_tokens():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    w = masked_whiten(x, mask)
    assert w[:, 2].tolist() == [0.0, 0.0]
    assert w[mask.bool()].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert w[mask.bool()].std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)


def test_value_loss_falls_and_values_track_returns(tmp_path):
    """4 items, every user wants item1; the critic must learn which answers pay (~10 s)."""
    from onereason.modeling import load_model_and_tokenizer
    from onereason.trie import SIDTrie

    index = toy_index(4, (2, 2, 2))
    model, tokenizer = load_model_and_tokenizer(toy_model(tmp_path / "model", index), dtype="float32")
    rows = toy_rows(index, 256)
    for row in rows:
        row["target_sids"] = [index.sid_text("item1")]
    data = datasets.Dataset.from_list(rows).remove_columns(["completion"])
    funcs, weights = build_rewards(["hit"], RewardContext(index, tokenizer))
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, activation_checkpointing=False, report_to=[],
        per_device_train_batch_size=32, num_generations=2, max_completion_length=32, max_steps=30,
        learning_rate=1e-3, lr_scheduler_type="constant", logging_steps=1, save_strategy="no", seed=0,
        loss_type="bnpo", scale_rewards="none", reward_weights=weights, disable_tqdm=True,
    )  # fmt: skip
    torch.manual_seed(0)
    trainer = ConstrainedPPOTrainer(
        model=model, reward_funcs=funcs, args=args, train_dataset=data, processing_class=tokenizer,
        trie=SIDTrie.from_index(index, tokenizer), think_budget=8, vf_coef=1.0,
    )  # fmt: skip
    trainer.train()
    value_loss = [h["ppo/value_loss"] for h in trainer.state.log_history if "ppo/value_loss" in h]
    assert np.mean(value_loss[-5:]) < 0.5 * np.mean(value_loss[:5]), value_loss
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.3

    # Fresh rollouts at a high temperature (hits and misses both common): the critic's values
    # rank them — most clearly once the answer is written (the last scored token).
    trainer.rollout_generator.temperature = 5.0
    trainer.current_gradient_accumulation_steps = 1
    scored = trainer._generate_and_score_completions([data[i] for i in range(32) for _ in range(2)])
    mask = (scored["completion_mask"] * scored["tool_mask"]).bool()
    values, returns = scored["old_values"], scored["returns"]
    assert returns[mask].std() > 0.1, "the check needs both hits and misses"
    all_tokens = np.corrcoef(values[mask].numpy(), returns[mask].numpy())[0, 1]
    last = torch.where(mask, torch.arange(mask.size(1)).expand_as(mask), -1).max(1).values
    rows_ = torch.arange(len(last))
    last_token = np.corrcoef(values[rows_, last].numpy(), returns[rows_, last].numpy())[0, 1]
    assert all_tokens > 0.2 and last_token > 0.4, (all_tokens, last_token)


def test_tiny_recipe_runs_and_keeps_the_model_folder_plain(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    index = toy_index(8, (2, 2, 2))
    model_dir = toy_model(tmp_path / "model", index)
    tasks = write_toy_dataset(tmp_path / "tasks", index, n_train=32)
    out = tmp_path / "ppo"
    from onereason.train import main

    main([
        "--config", "recipes/tiny/ppo.yaml", "--model_name_or_path", str(model_dir), "--dataset_path", str(tasks),
        "--output_dir", str(out), "--max_steps", "2", "--logging_steps", "1", "--think_budget", "8",
        "--rewards", "hit", "partial:0.3", "--save_steps", "2",
    ])  # fmt: skip
    assert json.loads((out / HISTORY_FILE).read_text())[-1]["stage"] == "ppo"
    head = torch.load(out / "value_head.pt")
    assert set(head) == {"summary.weight", "summary.bias"}
    assert not any("value_head" in k for k in load_file(str(out / "model.safetensors")))
    assert any("value_head" in k for k in load_file(str(out / "checkpoint-2" / "model.safetensors"))), (
        "checkpoints carry the critic, so a resumed run continues it"
    )
    AutoModelForCausalLM.from_pretrained(out)  # a plain causal LM for the next stage
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert any("ppo/value_loss" in h for h in state["log_history"])


def test_a_killed_run_resumes_from_its_checkpoint_with_the_value_head(tmp_path, monkeypatch):
    """SIGTERM after step 1 saves checkpoint-1 (policy + critic + optimizer) and exits 143; the same
    command again starts from it: the trained value head and its optimizer moments, not a fresh head."""
    import os
    import signal

    import transformers.trainer as hf_trainer
    from transformers import TrainerCallback

    from onereason.cli import main

    class KillAfterStep1(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1 and not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)

    class AtStart(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            head = model.value_head.summary.weight
            moments = optimizer.state.get(head, {})
            self.seen.append(
                (state.global_step, head.detach().clone(), moments.get("exp_avg", torch.zeros(0)).clone())
            )

    kill, start = KillAfterStep1(), AtStart()
    kill.sent, start.seen = False, []
    monkeypatch.setattr(hf_trainer, "DEFAULT_CALLBACKS", [*hf_trainer.DEFAULT_CALLBACKS, kill, start])
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    index = toy_index(8, (2, 2, 2))
    model_dir = toy_model(tmp_path / "model", index)
    tasks = write_toy_dataset(tmp_path / "tasks", index, n_train=32)
    out = tmp_path / "ppo"
    argv = [
        "train", "--config", "recipes/tiny/ppo.yaml", "--model_name_or_path", str(model_dir),
        "--dataset_path", str(tasks), "--output_dir", str(out), "--max_steps", "2", "--logging_steps", "1",
        "--think_budget", "8", "--save_steps", "10", "--num_iterations", "1",
    ]  # fmt: skip
    assert main(argv) == 128 + signal.SIGTERM
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (out / "value_head.pt").exists(), "a killed run is not a finished one"
    saved_head = load_file(str(out / "checkpoint-1" / "model.safetensors"))["value_head.summary.weight"]
    assert saved_head.abs().sum() > 0, "step 1 trained the (zero-initialised) value head"

    assert main(argv) == 0
    (_, fresh_head, _), (resumed_step, resumed_head, moments) = start.seen
    assert fresh_head.abs().sum() == 0 and resumed_step == 1
    assert torch.equal(resumed_head, saved_head), "the resumed run continues the checkpoint's critic"
    assert moments.abs().sum() > 0, "and its optimizer moments"
    final_head = torch.load(out / "value_head.pt")["summary.weight"]
    assert not torch.equal(final_head, saved_head), "step 2 trained it further"
    assert json.loads((out / HISTORY_FILE).read_text())[-1]["global_step"] == 2
