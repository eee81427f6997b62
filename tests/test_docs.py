"""The docs name only things that exist: recipes, data sources, commands and their flags.

Read from README.md and docs/*.md (and, for recipes and command lines, from the recipes'
comments and the packages' docstrings, which readers copy from too):

- every `recipes/...` path exists (`<x>`, `{x}` and `*` match any name, at least one file);
- every `source: X` / `--source X` is a registered data source;
- every `onereason <command>` (or `-m onereason.train`) is a command, each `--flag` on its
  line is accepted by that command's own parser, and a recipe passed to it as `--config`
  (or listed for it in the README's table of stages) holds only keys that parser accepts.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from data_builders.sources import SOURCES
from onereason.cli import COMMANDS
from onereason.cli import main as onereason
from onereason.train import STAGES

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Recipes' comments and the packages' docstrings show command lines too.
SOURCES_OF_COMMANDS = [
    *DOCS,
    *sorted((REPO / "recipes").rglob("*.yaml")),
    *sorted(p for pkg in ("onereason", "data_builders", "evaluation") for p in (REPO / pkg).rglob("*.py")),
]

RECIPE_PATH = re.compile(r"recipes/[\w.*<>{}/-]*[\w*>}/]")
SOURCE_NAME = re.compile(r"(?:\bsource: |--source[ =])([\w<>-]+)")
# `onereason <command> ...` or `-m onereason.train ...`, up to the end of the line (lines
# continued with `\` included), a closing backtick or a comment.
COMMAND_LINE = re.compile(
    r"(?:\bonereason (?P<cmd>[a-z][\w-]*)|-m onereason\.(?P<module>train))"
    r"(?P<rest>(?:\\\\?\n[ \t#]*|[^`#\n])*)"
)
FLAG = re.compile(r"(?<![\w-])--(\w[\w-]*)")
ALWAYS = {"--config", "--debug"}  # read by the config parser and by `onereason` itself
PLACEHOLDER = "key"  # `--key value`: the docs' way to say "any field"


def where(path: Path, text: str, pos: int) -> str:
    return f"{path.relative_to(REPO)}:{text.count(chr(10), 0, pos) + 1}"


def recipe_paths(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8")
    return [(m.group(0), where(path, text, m.start())) for m in RECIPE_PATH.finditer(text)]


def matches(pattern: str) -> list[Path]:
    glob = re.sub(r"<[^>]*>|\{[^}]*\}", "*", pattern.rstrip("/"))
    return sorted(REPO.glob(glob)) if "*" in glob else [REPO / glob] if (REPO / glob).exists() else []


@cache
def accepted(command: str, config: str | None = None) -> frozenset[str]:
    """The option strings of the parser `onereason <command> [--config config]` really builds."""
    from trl import TrlParser

    seen: list[frozenset[str]] = []

    def capture(self, *args, **kwargs):
        seen.append(frozenset(self._option_string_actions) | ALWAYS)
        raise SystemExit(0)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrlParser, "parse_args_and_config", capture)
        onereason([command, *(["--config", config] if config else [])])
    assert seen, f"onereason {command} parsed no options"
    return seen[0]


def train_flags(config: str | None) -> frozenset[str]:
    """`train`'s parser is the recipe's stage's; a recipe that is not here is matched by its name."""
    if config and (REPO / config).is_file():
        return accepted("train", str(REPO / config))
    stem = Path(config).stem if config else None
    stages = [stem] if stem in STAGES else STAGES
    return frozenset().union(
        *(accepted("train", str(REPO / f"recipes/tiny/{stage}.yaml")) for stage in stages)
    )


def flags_of(command: str, config: str | None) -> frozenset[str]:
    return train_flags(config) if command == "train" else accepted(command)


def command_lines(path: Path):
    """(command, its flags, its --config value, where) for every command line in `path`."""
    text = path.read_text(encoding="utf-8")
    for m in COMMAND_LINE.finditer(text):
        command, rest = m.group("cmd") or m.group("module"), m.group("rest")
        flags = [f for f in FLAG.findall(rest) if f != PLACEHOLDER]
        if command not in COMMANDS and not rest.lstrip().startswith("--"):
            continue  # prose: "a previous onereason output (see --overwrite)"
        config = re.search(r"--config[ =](\S+)", rest)
        yield command, flags, config and config.group(1), where(path, text, m.start())


def stage_table_configs() -> list[tuple[str, str, str]]:
    """(command, recipe, where) for the recipes the README's table of stages lists per command."""
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    rows = re.finditer(r"^\| `onereason ([\w-]+)` \|.*\| (?P<configs>[^|]*) \|$", text, re.M)
    return [
        (row.group(1), pattern, where(readme, text, row.start()))
        for row in rows
        for pattern in RECIPE_PATH.findall(row.group("configs"))
    ]


def check_config(command: str, recipe: str, place: str) -> list[str]:
    """A recipe given to `command`: it exists and holds only keys that command's parser accepts."""
    if re.search(r"[<{]", recipe):  # `recipes/<model>/<stage>.yaml` names a layout, not one file
        return [] if matches(recipe) else [f"{place}: {recipe}: no recipe has this layout"]
    files = [p for p in matches(recipe) if p.is_file()]
    if not files:
        return [f"{place}: onereason {command} --config {recipe}: no such recipe"]
    problems = []
    for file in files:
        keys = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        rel = str(file.relative_to(REPO))
        unknown = sorted(k for k in keys if k != "env" and f"--{k}" not in flags_of(command, rel))
        if unknown:
            problems.append(f"{place}: {rel} is not an onereason {command} config (keys {unknown})")
        if command == "build-data" and keys.get("source") not in SOURCES:
            problems.append(f"{place}: {rel}: unknown source {keys.get('source')!r}")
    return problems


def test_every_recipe_path_exists():
    missing = [
        f"{place}: {pattern}"
        for path in SOURCES_OF_COMMANDS
        for pattern, place in recipe_paths(path)
        if not matches(pattern)
    ]
    assert not missing, "recipes named but not in the repository:\n" + "\n".join(missing)


def test_every_named_source_is_registered():
    unknown = [
        f"{where(path, text, m.start())}: {m.group(1)}"
        for path in DOCS
        for text in [path.read_text(encoding="utf-8")]
        for m in SOURCE_NAME.finditer(text)
        if m.group(1) not in SOURCES and not m.group(1).startswith("<")
    ]
    assert not unknown, f"sources named but not registered ({', '.join(SOURCES)}):\n" + "\n".join(unknown)


def test_every_command_line_names_a_command_and_its_flags():
    problems, checked = [], 0
    for path in SOURCES_OF_COMMANDS:
        for command, flags, config, place in command_lines(path):
            if command not in COMMANDS:
                problems.append(f"{place}: onereason {command}: no such command")
                continue
            checked += 1
            known = flags_of(command, config)
            problems += [f"{place}: onereason {command} has no --{f}" for f in flags if f"--{f}" not in known]
            if config and config.startswith("recipes/"):
                problems += check_config(command, config, place)
    assert checked > 20, "the docs' command lines were not found"
    assert not problems, "\n".join(problems)


def test_the_readme_table_lists_each_command_s_own_recipes():
    configs = stage_table_configs()
    assert {c for c, _, _ in configs} >= {"build-data", "build-ids", "build-tasks", "eval"}
    problems = [p for command, recipe, place in configs for p in check_config(command, recipe, place)]
    assert not problems, "\n".join(problems)


def test_the_checks_fail_on_a_missing_recipe_or_flag():
    assert not matches("recipes/data/tasks_scientific.yaml") and matches("recipes/<model>/sft.yaml")
    assert check_config("build-tasks", "recipes/data/tasks_all.yaml", "here")  # a mixture, not a config
    assert "--max_history" in accepted("build-tasks") and "--no_such_flag" not in accepted("build-tasks")
    assert "--num_generations" in train_flags("recipes/tiny/grpo.yaml")
    assert "--num_generations" not in train_flags("recipes/tiny/sft.yaml")
