"""Think-stage sampling on vLLM: the long, unconstrained part of a thinking evaluation.

A thinking evaluation spends almost all its time sampling traces (up to `think_budget`
tokens per user) and very little decoding the SID that follows (a few tokens under the
trie). vLLM is much faster at the first; the second stays on
`onereason.sid_beam.constrained_beam_search` over the transformers model, because vLLM's
beam search takes no logits processor and the trie is what keeps every beam a real item.
So with `think_backend: vllm` the checkpoint is loaded twice on the GPU: once by vLLM
(`vllm_gpu_memory_utilization` of the memory for its weights and KV cache) and once by
transformers for the SID beams.

Sampling matches the transformers path: same temperature / top-p / top-k / budget, stop at
`</think>` or EOS, `think_samples` completions per prompt. Each call takes its seed from
torch's generator, which `generate_run` seeds per shard, so a resumed shard samples the
same traces.
"""

from __future__ import annotations

from collections.abc import Sequence

BACKENDS = ("transformers", "vllm", "auto")


def vllm_installed() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """`auto` -> vllm when importable, else transformers; `vllm` without vLLM is an error now, not mid-run.

    `backend` is one of `BACKENDS` (`DecodingConfig` checks it)."""
    if backend == "auto":
        return "vllm" if vllm_installed() else "transformers"
    if backend == "vllm" and not vllm_installed():
        raise ImportError(
            "think_backend: vllm needs vLLM (pip install vllm, on a GPU machine); or use transformers"
        )
    return backend


def completion_ids(completion, eos_id: int) -> list[int]:
    """A vLLM `CompletionOutput`'s tokens, ending in the token it stopped at.

    vLLM reports why a sequence stopped (`finish_reason` 'stop' with `stop_reason` = the stop
    token id, or None for EOS; 'length' for the budget) and, depending on the version and on
    whether the token is special, may leave that token out of `token_ids`. The caller parses
    `</think>` / EOS positions, so the stop token is put back when missing.
    """
    ids = list(completion.token_ids)
    if completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str):
        stop = eos_id if completion.stop_reason is None else completion.stop_reason
        if not ids or ids[-1] != stop:
            ids.append(stop)
    return ids


class VllmThinkSampler:
    """`sampler(heads, seed)` -> `think_samples` sampled continuations per head, in head order."""

    def __init__(
        self,
        model_path: str,
        temperature: float,
        top_p: float,
        top_k: int,
        max_tokens: int,
        samples: int,
        stop_ids: Sequence[int],
        eos_id: int,
        gpu_memory_utilization: float = 0.3,
        dtype: str = "auto",
        seed: int = 0,
    ):
        from vllm import LLM

        self.llm = LLM(
            model=str(model_path),
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=True,  # `think_samples` > 1 share their prompt
        )
        self.settings = dict(
            n=samples,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
            stop_token_ids=list(stop_ids),
            skip_special_tokens=False,
        )
        self.eos_id = eos_id

    def __call__(self, heads: Sequence[Sequence[int]], seed: int) -> list[list[int]]:
        from vllm import SamplingParams

        params = SamplingParams(seed=seed, **self.settings)
        outputs = self.llm.generate([{"prompt_token_ids": list(h)} for h in heads], params, use_tqdm=False)
        return [completion_ids(c, self.eos_id) for out in outputs for c in out.outputs]
