"""The `onereason` command: one subcommand per stage, each a `main(argv)` in its module.

    onereason quickstart --out runs/quickstart
    onereason build-data --config recipes/scientific/data.yaml
    onereason train --config recipes/tiny/sft.yaml --learning_rate 1e-4

Every subcommand takes `--config FILE.yaml` plus `--key value` overrides; `--help` lists
its fields with their help text.

Every expected failure ends in one line on stderr naming the file, row or key and what to
do, with exit code 2 for a bad command line or config and 1 for bad data or a bad model
(`onereason.errors`); `--debug` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
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
    lines += ["", "`onereason <command> --help` lists that command's options; --debug shows tracebacks."]
    return "\n".join(lines)


def run_command(name: str, func, argv: list[str], debug: bool = False) -> int:
    """Call a command's `main(argv)` and turn how it ended into an exit code.

    The one error path of the CLI: an expected exception becomes one line on stderr
    (`onereason.errors.describe`); SystemExit keeps its code (argparse: 2), and a message
    given to SystemExit is a config or usage error (2). With `debug` exceptions propagate.
    """
    from onereason.errors import describe, one_line

    line = None
    try:
        check_config_file(argv)
        return int(func(argv) or 0)
    except SystemExit as err:
        if err.code is None or isinstance(err.code, int):
            return int(err.code or 0)
        if debug:
            raise
        text = one_line(str(err.code))
        code, line = 2, text if text.startswith("error") else f"error: {name}: {text}"
    except KeyboardInterrupt:
        if debug:
            raise
        code, line = 130, f"error: {name}: interrupted"
    except Exception as err:
        if debug:
            raise
        code, line, _ = describe(err, name)
    # The exception (and the objects its frames held) is gone now: let progress bars and the
    # like close and print before the error line, so the error is the last line on stderr.
    gc.collect()
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    return code


def check_config_file(argv: list[str]) -> None:
    """`--config FILE`: the file must exist and be valid YAML (a usage error, exit code 2, otherwise)."""
    from onereason.configs import flag_value
    from onereason.errors import UsageError, describe

    path = flag_value(argv, "config")
    if path is None:
        return
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "not found"
        raise UsageError(f"config file {what}: {path}")
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UsageError(describe(err, "")[1].removeprefix("error: ")) from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        from onereason import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)} (onereason --help)",
            file=sys.stderr,
        )
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
        )
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    saved = sys.argv
    sys.argv = [f"onereason {name}", *rest]
    try:
        return run_command(name, func, rest, debug)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    raise SystemExit(main())
