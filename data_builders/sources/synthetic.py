"""The seeded synthetic world (data_builders.synthetic) as a source: canonical tables plus ground truth."""

from __future__ import annotations

from data_builders.sources.common import Loaded
from data_builders.synthetic import SyntheticConfig, generate_world


def load_synthetic(strict: bool = False, **options) -> Loaded:
    """The seeded synthetic world; `options` are `SyntheticConfig` fields (num_users, num_items, seed, ...).

    The World goes in `extra["world"]`; its ground truth also goes in `extra["tables"]`, which
    build-data writes beside the canonical tables (`truth.parquet`, `interests.parquet`) for
    the task builder's interest-grounded CoT and for measuring it.
    """
    world = generate_world(SyntheticConfig(**options))
    tables = {"truth": world.truth, "interests": world.interests}
    return Loaded(world.interactions, world.items, {}, None, {"world": world, "tables": tables})


load_synthetic.options_from = SyntheticConfig  # `build-data --help` lists its fields as the options
