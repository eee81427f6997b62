"""Run `python -m onereason.train` as a user launches it, and have every rank say what it saw.

    accelerate launch ... tests/rank_probe.py --config recipes/tiny/sft.yaml ...

With `RANK_PROBE_DIR` set, each process writes `rank-<i>.json` there at the end of training:
the world size it ran in, a digest of the training batches it saw, a digest of every weight
(gathered first under ZeRO-3) before and after training, and its logged losses. The launch
tests compare the ranks with these files: same weights, different data, two processes.
Not collected by pytest (no `test_` prefix); the entry point itself is not changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
from pathlib import Path


def _weights_digest(model) -> str:
    import torch

    params = dict(model.named_parameters())
    sharded = [p for p in params.values() if hasattr(p, "ds_id")]
    if sharded:  # ZeRO-3: each rank holds a shard; gather the full tensors on every rank
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(sharded, modifier_rank=None)
    else:
        import contextlib

        gather = contextlib.nullcontext()
    digest = hashlib.sha256()
    with gather, torch.no_grad():
        for name in sorted(params):
            digest.update(name.encode())
            digest.update(params[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _install(out: Path) -> None:
    import torch
    import torch.distributed as dist
    import transformers.trainer as hf_trainer
    from transformers import TrainerCallback

    class RankProbe(TrainerCallback):
        def __init__(self):
            self.batches: list[str] = []
            self.before: str | None = None

        def _record(self, module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if module.training and torch.is_grad_enabled() and ids is not None:
                self.batches.append(hashlib.sha256(ids.detach().cpu().numpy().tobytes()).hexdigest()[:16])

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.before = _weights_digest(model)
            model.register_forward_pre_hook(self._record, with_kwargs=True)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            rank = dist.get_rank() if dist.is_initialized() else 0
            record = {
                "rank": rank,
                "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                "global_step": state.global_step,
                "weights_before": self.before,
                "weights_after": _weights_digest(model),
                "batches": self.batches,
                "losses": [h["loss"] for h in state.log_history if "loss" in h],
            }
            out.mkdir(parents=True, exist_ok=True)
            (out / f"rank-{rank}.json").write_text(json.dumps(record))

    hf_trainer.DEFAULT_CALLBACKS.append(RankProbe())


if __name__ == "__main__":
    if os.environ.get("RANK_PROBE_DIR"):
        _install(Path(os.environ["RANK_PROBE_DIR"]))
    runpy.run_module("onereason.train", run_name="__main__", alter_sys=True)
