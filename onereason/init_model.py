"""`onereason init-model`: a tiny Qwen3-style model + tokenizer, built offline.

The tokenizer is trained on a corpus (item texts from an items table, plus the prompt
phrasings the task builders use) so the model sees sensible subwords; itemic tokens from
an item index become single tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from onereason.configs import parse_config
from onereason.modeling import SIZE_PRESETS, init_model

# Where the task builders keep their prompt and CoT phrasings (YAML package data, read as
# files: the library imports no builder code).
TEMPLATES_PACKAGE = "data_builders.tasks"
# Copies of the prompt phrases in the tokenizer corpus (see `build`).
PROMPT_CORPUS_WEIGHT = 200


# preset fields the config may override, each a count >= 1 (None keeps the preset's)
SIZE_OVERRIDES = (
    "intermediate_size",
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
)


@dataclass
class InitModelConfig:
    output_dir: str = field(metadata={"help": "Folder to write the model and tokenizer to."})
    preset: str = field(default="tiny", metadata={"help": f"Size preset: one of {sorted(SIZE_PRESETS)}."})
    items_path: str | None = field(
        default=None,
        metadata={"help": "items.parquet (from build-data) whose titles/descriptions train the tokenizer."},
    )
    corpus_files: list[str] | None = field(
        default=None, metadata={"help": "Extra plain-text files for the tokenizer corpus."}
    )
    item_index: str | None = field(
        default=None,
        metadata={"help": "item_index.json: its itemic tokens become single tokens; copied into output_dir."},
    )
    vocab_size: int | None = field(
        default=None, metadata={"help": "BPE vocabulary size (default: the preset's)."}
    )
    attention_dropout: float | None = field(
        default=None,
        metadata={"help": "Attention dropout (default: the preset's): a regulariser for small catalogues."},
    )
    intermediate_size: int | None = field(
        default=None,
        metadata={
            "help": "MLP width (default: the preset's): the model's memory for item-to-item transitions."
        },
    )
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Layers (default: the preset's)."})
    hidden_size: int | None = field(
        default=None,
        metadata={"help": "Model width, also of the itemic-token embeddings (default: the preset's)."},
    )
    num_attention_heads: int | None = field(
        default=None, metadata={"help": "Attention heads (default: the preset's); must divide hidden_size."}
    )
    num_key_value_heads: int | None = field(
        default=None,
        metadata={"help": "Key/value heads (default: the preset's); must divide num_attention_heads."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for the model's initial weights."})
    overwrite: bool = field(
        default=False,
        metadata={"help": "Write into output_dir even when onereason did not create it (never an input)."},
    )

    def __post_init__(self):
        if self.preset not in SIZE_PRESETS:
            raise ValueError(
                f"preset: unknown size preset {self.preset!r}; choose one of {sorted(SIZE_PRESETS)}"
            )
        if self.attention_dropout is not None and not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout: must be in [0, 1), got {self.attention_dropout}")
        for name in SIZE_OVERRIDES:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        preset = SIZE_PRESETS[self.preset]
        width = self.hidden_size or preset.hidden_size
        heads = self.num_attention_heads or preset.num_attention_heads
        kv_heads = self.num_key_value_heads or preset.num_key_value_heads
        if width % heads or heads % kv_heads:
            raise ValueError(
                f"hidden_size {width}, num_attention_heads {heads}, num_key_value_heads {kv_heads}: "
                "the heads must divide the width and the key/value heads the heads"
            )
        if (width // heads) % 2:
            raise ValueError(
                f"hidden_size {width} / num_attention_heads {heads} = {width // heads}: "
                "rotary embeddings need an even head size"
            )


def corpus_from_items(items_path: str | Path) -> list[str]:
    from onereason.tables import read_items

    table = read_items(items_path)
    texts = []
    for col in ("title", "description", "brand"):
        if col in table.column_names:
            texts += [t for t in table.column(col).to_pylist() if t]
    if "categories" in table.column_names:
        texts += [" > ".join(c) for c in table.column("categories").to_pylist() if c]
    return texts


def prompt_corpus() -> list[str]:
    """Every phrase of the task builders' prompt and CoT templates (placeholders removed).

    A from-scratch model sees these phrases in every row; whole-word tokens for them make
    rows several times shorter than a tokenizer trained on item texts alone would.
    """
    import re
    from importlib import resources

    import yaml

    # The chat template's role names and the thinking switches, in every row.
    texts: list[str] = ["system\n", "user\n", "assistant\n", "The user /think", "The user /no_think"]
    try:  # the task builders' phrasings ship as package data beside them
        folder = resources.files(TEMPLATES_PACKAGE) / "templates"
    except ModuleNotFoundError:
        return texts

    def collect(node) -> None:
        if isinstance(node, str):
            texts.append(re.sub(r"\{[^}]*\}", " ", node))
        elif isinstance(node, dict):
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    for path in sorted((p for p in folder.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name):
        collect(yaml.safe_load(path.read_text(encoding="utf-8")))
    return texts


def check_inputs(config: InitModelConfig) -> None:
    """Input files exist and the item index loads; the output folder is new, empty or ours."""
    from onereason.consistency import load_index, require_path
    from onereason.io import check_output_dir

    if config.items_path:
        require_path(config.items_path, "items_path", "file", "run `onereason build-data` first")
    for path in config.corpus_files or []:
        require_path(path, "corpus_files", "file")
    if config.item_index:
        load_index(config.item_index)
    inputs = [config.items_path, config.item_index, *(config.corpus_files or [])]
    check_output_dir(
        config.output_dir, inputs=inputs, overwrite=config.overwrite, what="output_dir", replaces=False
    )


def build(config: InitModelConfig) -> Path:
    from onereason.io import make_output_dir

    check_inputs(config)
    # Every training row repeats these phrases while an item's text shows up in a few rows: weighted
    # this heavily, BPE spends merges on whole prompt words ("user", " history", " /no_think" in 3
    # tokens, not 6): Scientific rows ~15 tokens shorter, thinking rows 14% shorter than at x20.
    corpus = prompt_corpus() * PROMPT_CORPUS_WEIGHT
    if config.items_path:
        corpus += corpus_from_items(config.items_path)
    for path in config.corpus_files or []:
        corpus += Path(path).read_text(encoding="utf-8").splitlines()
    itemic_tokens: list[str] = []
    index = None
    if config.item_index:
        from onereason.item_index import ItemIndex

        index = ItemIndex.load(config.item_index)
        itemic_tokens = index.itemic_tokens()
    make_output_dir(config.output_dir, overwrite=True, what="output_dir", replaces=False)
    out = init_model(
        config.output_dir, corpus, config.preset, itemic_tokens, config.seed, config.vocab_size,
        attention_dropout=config.attention_dropout,
        **{name: getattr(config, name) for name in SIZE_OVERRIDES},
    )  # fmt: skip
    if index is not None:
        index.save(out / "item_index.json")
    return out


def main(argv: list[str] | None = None) -> int:
    (config,) = parse_config([InitModelConfig], argv)
    out = build(config)
    print(f"model written to {out}")
    return 0
