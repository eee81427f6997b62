"""The one training entry point: the recipe's `stage:` picks the stage module.

    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml \\
        -m onereason.train --config recipes/qwen3-1.7b/sft.yaml --learning_rate 1e-5
    onereason train --config recipes/tiny/sft.yaml

`stage: align|sft|grpo|ppo|unify` names `onereason.stages.<stage>`; that module declares
`CONFIG_CLASSES` (its dataclasses, e.g. `(ModelConfig, DataArguments, AlignConfig)`) and
`run(*configs)`. The YAML plus `--key value` overrides are parsed into `StageArguments`
and those classes by TRL's parser, so an unknown key or a bad value stops the run here,
with the key's name, before any model loads.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from onereason.configs import parse_config, read_yaml

STAGES = ("align", "sft", "grpo", "ppo", "unify")


@dataclass
class StageArguments:
    stage: str = field(
        metadata={"help": f"Which training stage this recipe runs: one of {', '.join(STAGES)}."}
    )


def stage_module(stage: str):
    """Import `onereason.stages.<stage>`; a clear error for unknown or not-yet-installed stages."""
    if stage not in STAGES:
        raise SystemExit(f"error: stage: unknown stage {stage!r}; choose one of {list(STAGES)}")
    try:
        return importlib.import_module(f"onereason.stages.{stage}")
    except ModuleNotFoundError as err:
        if err.name == f"onereason.stages.{stage}":
            raise SystemExit(f"error: stage {stage!r} is not available in this installation") from err
        raise


def _stage_from_argv(argv: Sequence[str]) -> str:
    """`--stage X` on the command line wins over `stage:` in the YAML (as for every key)."""
    for i, arg in enumerate(argv):
        if arg == "--stage" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--stage="):
            return arg.split("=", 1)[1]
    config = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            config = argv[i + 1]
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
    if config is None:
        raise SystemExit("error: pass --config <recipe>.yaml (its `stage:` key picks the training stage)")
    stage = read_yaml(config).get("stage")
    if stage is None:
        raise SystemExit(f"error: {config}: missing `stage:` (one of {list(STAGES)})")
    return str(stage)


def parse_stage_config(argv: Sequence[str] | None = None):
    """Parse a recipe + overrides into `(module, configs)`; nothing heavy is loaded."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in {"-h", "--help"} for a in argv) and not any(
        a == "--config" or a.startswith("--config=") for a in argv
    ):
        print(f"usage: onereason train --config RECIPE.yaml [--key value ...]\n\n{__doc__}")
        print("`onereason train --config RECIPE.yaml --help` lists that stage's fields with their help text.")
        raise SystemExit(0)
    module = stage_module(_stage_from_argv(argv))
    parsed = parse_config(
        (StageArguments, *module.CONFIG_CLASSES), argv, prog=f"onereason train ({module.__name__})"
    )
    return module, parsed[1:]


def main(argv: Sequence[str] | None = None) -> int:
    module, configs = parse_stage_config(argv)
    module.run(*configs)
    return 0


if __name__ == "__main__":
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    raise SystemExit(main())
