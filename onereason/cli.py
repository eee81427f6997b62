"""The `onereason` command: one subcommand per stage, each a `main(argv)` in its module.

    onereason quickstart --out runs/quickstart
    onereason build-data --config recipes/scientific/data.yaml
    onereason train --config recipes/tiny/sft.yaml --learning_rate 1e-4

Every subcommand takes `--config FILE.yaml` plus `--key value` overrides; `--help` lists
its fields with their help text.
"""

from __future__ import annotations

import importlib
import logging
import sys

# name -> (module:function, one-line summary). Imports are lazy so `--help` is instant.
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": (
        "onereason.quickstart:main",
        "run the whole pipeline on the synthetic world (CPU, minutes)",
    ),
    "init-model": ("onereason.init_model:main", "build a tiny Qwen3-style model + tokenizer offline"),
    "build-data": (
        "data_builders.build:main",
        "load a source, clean it, split it (canonical tables + stats.json)",
    ),
    "build-ids": (
        "data_builders.identifiers.build:main",
        "item embeddings -> semantic IDs + Term IDs -> item_index.json",
    ),
    "build-tasks": (
        "data_builders.tasks.build:main",
        "histories -> task datasets with three-level CoT (DatasetDict)",
    ),
    "train": ("onereason.train:main", "run a training stage from a recipe (align, sft, grpo, ppo, unify)"),
    "eval": ("evaluation.run:main", "constrained generation, metrics, thinking vs non-thinking report"),
    "push": ("onereason.push:main", "push a model + tokenizer + item index + model card to the Hub"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: onereason <command> [--config FILE.yaml] [--key value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`onereason <command> --help` lists that command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        from onereason import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"onereason: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    sys.argv = [f"onereason {name}", *rest]
    result = func(rest)
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
