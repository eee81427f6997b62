"""`ConstrainedPPOTrainer`: PPO (critic + GAE + clipped losses) on the same constrained rollouts.

TRL dropped its PPO trainer after 1.12, but its GRPO trainer already holds every PPO part
except the critic: rollout generation and buffering over `steps_per_generation` /
`num_iterations` (PPO epochs), the reward registry, the clipped surrogate loss
(`epsilon`, token-level advantages of shape (B, T) are supported), an optional KL
penalty to a reference model (`beta`), checkpoints and distributed training. This class
adds the critic on top of `ConstrainedGRPOTrainer`:

- a **value head** (`ValueHead`, a linear layer on the policy's last hidden state) that is
  attached to the policy as `model.value_head`, so the optimizer, DDP/DeepSpeed wrapping
  and checkpoints carry it like any other weight;
- after each rollout, values of every completion position, and **GAE** advantages and
  returns from the sequence reward placed on the last scored token (advantages whitened);
- the loss: TRL's clipped policy loss on those token advantages + `vf_coef` × the clipped
  value loss `½·max((V−R)², (clip(V, V_old±cliprange_value)−R)²)`.

A reward *model* is plugged in like any reward (`rewards: [{name: model:<path>}]`).
"""

from __future__ import annotations

import torch
from torch import nn

from onereason.rl.grpo_trainer import ConstrainedGRPOTrainer

VALUE_HEAD_ATTR = "value_head"


class ValueHead(nn.Module):
    """V(s_t) from the hidden state that predicts token t (zero-initialised: no initial bias)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


def add_value_head(model) -> ValueHead:
    """Attach (or return the existing) value head of a causal LM."""
    head = getattr(model, VALUE_HEAD_ATTR, None)
    if head is None:
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        head = ValueHead(config.hidden_size).to(next(model.parameters()).device)
        model.add_module(VALUE_HEAD_ATTR, head)
    return head


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the scored positions of each row.

    `rewards`, `values`, `mask`: (B, T). Positions with mask 0 (forced tokens, padding) are
    skipped: the next scored position's value bootstraps across them, and the episode
    ends after the last scored position (value 0 beyond it). Returns (advantages, returns).
    """
    B, T = rewards.shape
    advantages = torch.zeros_like(values)
    next_value = torch.zeros(B, device=values.device, dtype=values.dtype)
    next_adv = torch.zeros_like(next_value)
    m = mask.to(values.dtype)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = adv * m[:, t]
        next_value = torch.where(m[:, t] > 0, values[:, t], next_value)
        next_adv = torch.where(m[:, t] > 0, adv, next_adv)
    returns = (advantages + values) * m
    return advantages, returns


def place_final_reward(sequence_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) rewards: each row's reward on its last scored position, zero elsewhere."""
    rewards = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    last = torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(dim=1).values
    rows = torch.nonzero(last >= 0).squeeze(-1)
    rewards[rows, last[rows]] = sequence_rewards[rows].float()
    return rewards


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    m = mask.to(x.dtype)
    n = m.sum().clamp(min=1.0)
    mean = (x * m).sum() / n
    var = (((x - mean) ** 2) * m).sum() / n
    return (x - mean) * torch.rsqrt(var + eps) * m


class ConstrainedPPOTrainer(ConstrainedGRPOTrainer):
    """PPO with a value head, GAE and clipped policy/value losses (see the module doc).

    Args beyond `ConstrainedGRPOTrainer`'s:
        gamma, lam: GAE discount and trace decay.
        vf_coef: weight of the value loss.
        cliprange_value: how far the new value may move from the rollout's value before clipping.
        whiten_advantages: normalise advantages over the batch's scored tokens.
        value_lr_multiplier: the value head's learning rate is the policy's times this (a
            freshly initialised head must catch up with a pretrained policy).
    """

    def __init__(
        self,
        model,
        *args,
        gamma: float = 1.0,
        lam: float = 0.95,
        vf_coef: float = 0.5,
        cliprange_value: float = 0.2,
        whiten_advantages: bool = True,
        value_lr_multiplier: float = 10.0,
        **kwargs,
    ):
        if isinstance(model, str):
            raise TypeError("ConstrainedPPOTrainer needs a loaded model (the value head is attached to it)")
        add_value_head(model)
        # The head runs inside the policy's forward (a hook on the policy module), under the
        # same wrapper (DDP, DeepSpeed) as the policy. Every parameter gets a gradient each
        # step, so DDP need not search for unused ones (that search, which cannot see the
        # head's path from the outputs, would mark the head's parameters ready twice).
        model.register_forward_hook(self._value_hook, with_kwargs=True)
        args_ = kwargs.get("args", args[1] if len(args) > 1 else None)
        if args_ is not None and args_.ddp_find_unused_parameters is None:
            args_.ddp_find_unused_parameters = False
        super().__init__(model, *args, **kwargs)
        self.gamma, self.lam = gamma, lam
        self.vf_coef, self.cliprange_value = vf_coef, cliprange_value
        self.whiten_advantages = whiten_advantages
        self.value_lr_multiplier = value_lr_multiplier
        self._capture_hidden = False
        self._captured_values: list[torch.Tensor] = []
        self._local_rewards: torch.Tensor | None = None

    # ------------------------------------------------------------------ critic

    def _value_head(self, model) -> ValueHead:
        unwrapped = self.accelerator.unwrap_model(model)
        head = getattr(unwrapped, VALUE_HEAD_ATTR, None)
        if head is None and hasattr(unwrapped, "get_base_model"):  # PEFT wrapper
            head = getattr(unwrapped.get_base_model(), VALUE_HEAD_ATTR, None)
        if head is None:
            raise RuntimeError("the policy has no value head; build the trainer with add_value_head(model)")
        return head

    def _value_hook(self, module, args, kwargs, output):
        if self._capture_hidden and kwargs.get("output_hidden_states"):
            self._captured_values.append(getattr(module, VALUE_HEAD_ATTR)(output.hidden_states[-1]))
        return output

    def _forward(self, model, input_ids, attention_mask, logits_to_keep):
        """While the loss is computed, also keep the values of the completion positions."""
        if not self._capture_hidden:
            return super()._forward(model, input_ids, attention_mask, logits_to_keep)
        with self.accelerator.autocast():
            outputs = model(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=True
            )
        self._captured_values[-1] = self._captured_values[-1][:, -logits_to_keep - 1 : -1]
        return outputs

    @torch.no_grad()
    def _values(self, input_ids, attention_mask, logits_to_keep) -> torch.Tensor:
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=True
        )
        hidden = outputs.hidden_states[-1][:, -logits_to_keep - 1 : -1]
        return self._value_head(self.model)(hidden).float()

    def create_optimizer(self, model=None):
        """TRL/HF optimizer, with the value head in its own group at `value_lr_multiplier` × lr."""
        optimizer = super().create_optimizer(model)
        head = {id(p) for p in self._value_head(self.model).parameters()}
        moved = []
        for group in optimizer.param_groups:
            kept = [p for p in group["params"] if id(p) not in head]
            moved += [p for p in group["params"] if id(p) in head]
            group["params"] = kept
        optimizer.param_groups = [g for g in optimizer.param_groups if g["params"]]
        if moved:
            lr = self.args.learning_rate * self.value_lr_multiplier
            optimizer.add_param_group({"params": moved, "lr": lr, "weight_decay": 0.0})
        return optimizer

    # ------------------------------------------------------------------ advantages

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        total = (rewards_per_func * weights).nansum(dim=1)
        n = len(prompts)
        start = self.accelerator.process_index * n
        self._local_rewards = total[start : start + n]
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        mask = out["completion_mask"] * out.get("tool_mask", torch.ones_like(out["completion_mask"]))
        input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        values = self._values(input_ids, attention_mask, out["completion_ids"].size(1))
        token_rewards = place_final_reward(self._local_rewards.to(values.device), mask)
        advantages, returns = gae(token_rewards, values * mask, mask, self.gamma, self.lam)
        if self.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        out["advantages"] = advantages
        out["returns"] = returns
        out["old_values"] = values
        mode = "train" if self.model.training else "eval"
        scored = mask.bool()
        self._metrics[mode]["ppo/value_mean"].append(values[scored].mean().item() if scored.any() else 0.0)
        self._metrics[mode]["ppo/return_mean"].append(returns[scored].mean().item() if scored.any() else 0.0)
        return out

    # ------------------------------------------------------------------ loss

    def _compute_loss(self, model, inputs):
        self._capture_hidden, self._captured_values = True, []
        try:
            policy_loss = super()._compute_loss(model, inputs)
        finally:
            self._capture_hidden = False
        values = torch.cat(self._captured_values, dim=0).float()
        self._captured_values = []
        mask = inputs["completion_mask"] * inputs.get("tool_mask", torch.ones_like(inputs["completion_mask"]))
        m = mask.float()
        old, returns = inputs["old_values"], inputs["returns"]
        clipped = old + (values - old).clamp(-self.cliprange_value, self.cliprange_value)
        per_token = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)
        value_loss = (per_token * m).sum() / m.sum().clamp(min=1.0)
        mode = "train" if self.model.training else "eval"
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        self._metrics[mode]["ppo/value_loss"].append(
            self.accelerator.gather(value_loss.detach()).mean().item()
        )
        clipfrac = (((values - old).abs() > self.cliprange_value).float() * m).sum() / m.sum().clamp(min=1.0)
        self._metrics[mode]["ppo/value_clipfrac"].append(self.accelerator.gather(clipfrac).mean().item())
        return policy_loss + self.vf_coef * value_loss / normalizer
