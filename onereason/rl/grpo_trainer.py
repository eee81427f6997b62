"""`ConstrainedGRPOTrainer`: TRL's `GRPOTrainer` with two-stage, trie-constrained rollouts.

TRL 1.16 has no logits-processor hook in GRPO, and it recomputes the log-probs for the
loss from the model's raw logits. Two overrides change exactly that and nothing else:

- rollouts go through TRL's own `rollout_func` path (`_generate`), filled by
  `TwoStageGenerator`: TRL still decodes, logs, scores and batches the completions, masks
  forced tokens through `env_mask`, and hands `sid_start` / `beam_rank` to the rewards;
- `_get_per_token_logps_and_entropies` — used for the policy, the old policy and the
  reference model alike — renormalises the logits of SID positions over the trie's
  allowed tokens, so the loss sees the distribution the rollout sampled from.

With `use_vllm` (server or colocate), stage 1 — the think block, the long part — is sampled
by TRL's own vLLM generation, weights synced by TRL before each rollout; stage 2 stays on the
policy under the trie (vLLM's sampler has no hook for it), and the loss still uses the
recomputed constrained log-probs. This path has not yet been run on a GPU by us.

Everything else (group advantages, clipping, KL, DAPO loss, checkpoints, DDP/DeepSpeed)
is TRL's.
"""

from __future__ import annotations

import torch
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation

from onereason.decoding import THINK_BUDGET
from onereason.rl.rollout import TwoStageGenerator, constrained_log_probs, entropy_of, prompt_mode, sid_starts


class ConstrainedGRPOTrainer(GRPOTrainer):
    """GRPO whose completions are free think blocks followed by trie-valid SIDs.

    Args beyond `GRPOTrainer`'s:
        trie: a `onereason.trie.SIDTrie` for the catalogue.
        think_budget: most tokens sampled inside `<think>` before the block is closed.
        num_sids: SIDs per answer (EOS is allowed only after that many).
        decoding: `sample` (each group member sampled) or `beam` (the group is the top
            `num_generations` beams of constrained beam search after one sampled think block).
        max_sid_tokens: tokens of one SID, an upper bound for the answer length.
    """

    def __init__(
        self,
        *args,
        trie,
        think_budget: int = THINK_BUDGET,
        num_sids: int = 1,
        decoding: str = "sample",
        max_sid_tokens: int = 16,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.trie = trie
        self.rollout_generator = TwoStageGenerator(
            trie,
            self._tokenizer,
            think_budget=think_budget,
            num_sids=num_sids,
            temperature=self.temperature,
            decoding=decoding,
            max_sid_tokens=max_sid_tokens,
            think_sampler=self._vllm_think if self.use_vllm else None,
        )
        if self.rollout_generator.max_completion_tokens > self.max_completion_length:
            raise ValueError(
                f"max_completion_length={self.max_completion_length} is shorter than the longest two-stage "
                f"completion ({self.rollout_generator.max_completion_tokens} tokens: think_budget={think_budget}, "
                f"num_sids={num_sids} x {max_sid_tokens} SID tokens, forced think tags); raise it or lower think_budget"
            )
        # TRL's documented rollout hook; set after __init__ so no "experimental" warning is printed.
        self.rollout_func = self._two_stage_rollout

    # ------------------------------------------------------------------ rollouts

    def _two_stage_rollout(self, prompts: list, trainer=None) -> dict:
        """TRL `rollout_func`: prompts (already repeated `num_generations` times) → token ids + extras."""
        prompt_ids, _, _ = self._tokenize_prompts(prompts)
        modes = [prompt_mode(p) for p in prompts]
        group = self.num_generations if self.model.training else self.num_generations_eval
        with unwrap_model_for_generation(
            self.model_wrapped,
            self.accelerator,
            gather_deepspeed3_params=self.args.ds3_gather_for_generation,
            gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
        ) as model:
            rollout = self.rollout_generator.generate(model, prompt_ids, modes, group_size=group)
        return {
            "prompt_ids": rollout.prompt_ids,
            "completion_ids": rollout.completion_ids,
            "logprobs": None,  # the trainer recomputes constrained log-probs itself
            "env_mask": rollout.env_mask,
            "sid_start": rollout.sid_start,
            "beam_rank": rollout.beam_rank,
        }

    def _vllm_think(self, heads: list[list[int]]) -> list[list[int]]:
        """Stage 1 on TRL's vLLM generation (server or colocate; TRL syncs the weights before each
        rollout): one think block per head, at most `think_budget` tokens, stopping at `</think>`/EOS."""
        vllm = self.vllm_generation
        generator = self.rollout_generator
        saved = vllm.max_completion_length, dict(vllm.generation_kwargs)
        vllm.max_completion_length = generator.think_budget
        vllm.generation_kwargs = {
            **vllm.generation_kwargs,
            "stop_token_ids": [generator.think_close_id, *generator.eos_ids],
        }
        try:
            _, completions, _, _ = vllm.generate(heads, None, num_generations=1)
        finally:
            vllm.max_completion_length, vllm.generation_kwargs = saved
        return [list(c) for c in completions]

    # ------------------------------------------------------------------ log-probs

    def _forward(self, model, input_ids, attention_mask, logits_to_keep):
        """The model's forward pass for log-probs (PPO overrides it to also read hidden states)."""
        with self.accelerator.autocast():
            return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    def _forward_constrained(self, model, input_ids, attention_mask, logits_to_keep, compute_entropy=False):
        """Constrained per-token log-probs (and entropies) of the last `logits_to_keep` tokens."""
        outputs = self._forward(model, input_ids, attention_mask, logits_to_keep)
        logits = outputs.logits[:, -logits_to_keep - 1 : -1, :] / self.temperature
        completion = input_ids[:, -logits_to_keep:]
        generator = self.rollout_generator
        starts = sid_starts(completion, generator.think_close_id, len(generator.answer_sep_ids))
        logps, constrained = constrained_log_probs(self.trie, logits, completion, starts, generator.num_sids)
        entropies = entropy_of(constrained) if compute_entropy else None
        return logps, entropies, outputs

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal,
    ):
        if any(v is not None for v in multimodal.values()):
            raise NotImplementedError("ConstrainedGRPOTrainer handles text-only models")
        batch_size = batch_size or input_ids.size(0)
        all_logps, all_entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            end = start + batch_size
            logps, entropies, _ = self._forward_constrained(
                model, input_ids[start:end], attention_mask[start:end], logits_to_keep, compute_entropy
            )
            all_logps.append(logps)
            all_entropies.append(entropies)
        logps = torch.cat(all_logps, dim=0)
        entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
        return logps, entropies, None
