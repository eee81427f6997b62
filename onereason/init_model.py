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


@dataclass
class InitModelConfig:
    output_dir: str = field(metadata={"help": "Folder to write the model and tokenizer to."})
    preset: str = field(default="tiny", metadata={"help": f"Size preset: one of {sorted(SIZE_PRESETS)}."})
    items_path: str | None = field(
        default=None, metadata={"help": "items.parquet (from build-data) whose titles/descriptions train the tokenizer."}
    )
    corpus_files: list[str] | None = field(default=None, metadata={"help": "Extra plain-text files for the tokenizer corpus."})
    item_index: str | None = field(
        default=None, metadata={"help": "item_index.json: its itemic tokens become single tokens; copied into output_dir."}
    )
    vocab_size: int | None = field(default=None, metadata={"help": "BPE vocabulary size (default: the preset's)."})
    seed: int = field(default=0, metadata={"help": "Seed for the model's initial weights."})


def corpus_from_items(items_path: str | Path) -> list[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(items_path)
    texts = []
    for col in ("title", "description", "brand"):
        if col in table.column_names:
            texts += [t for t in table.column(col).to_pylist() if t]
    if "categories" in table.column_names:
        texts += [" > ".join(c) for c in table.column("categories").to_pylist() if c]
    return texts


# Phrasings every prompt uses, so the tokenizer has whole-word tokens for them.
PROMPT_CORPUS = [
    "You are a recommender. The user's history, oldest first. Which item will the user interact with next?",
    "Derivation: Evolution: Recommendation: long-term short-term periodic fading interest noise item",
    "The next item should be a similar item from the same category, style and price band.",
]


def build(config: InitModelConfig) -> Path:
    corpus = list(PROMPT_CORPUS) * 10
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
    out = init_model(config.output_dir, corpus, config.preset, itemic_tokens, config.seed, config.vocab_size)
    if index is not None:
        index.save(out / "item_index.json")
    return out


def main(argv: list[str] | None = None) -> int:
    (config,) = parse_config([InitModelConfig], argv)
    out = build(config)
    print(f"model written to {out}")
    return 0
