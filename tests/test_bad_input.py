"""Bad input for every command: one clear line, the right exit code, nothing lost, nothing half-written.

Each case makes its own input files (or config) under a fresh folder, runs the real CLI
in-process (`onereason.cli.main`, stdout/stderr captured) and checks:

- the exit code (2: the command line or config asks for something impossible, 1: a bad
  file, row, index or model; 0 for the few "proceeds and says so" cases);
- the last line of stderr is an error naming the culprit (file, row or key);
- no traceback anywhere in the output;
- the inputs are untouched (SHA-256 of every file before and after), including an
  existing folder given as the output;
- no half-written output: a failed command leaves no output folder it did not have, and
  no temporary sibling folders.

`benchmarks/bench_bad_input.py` runs the same table (`CASES`) and prints
cases / tracebacks / data lost. Model-needing cases use tiny models (`make_tiny_model`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

# ---------------------------------------------------------------------------------------------
# Shared inputs: a small built data set, its index, tiny models and a task dataset
# ---------------------------------------------------------------------------------------------


class World:
    """Inputs several cases read (never modify: every case hashes them before and after)."""

    def __init__(self, base: Path, make_model: Callable[..., Path]):
        self.base = Path(base)
        self._make_model = make_model
        self._cache: dict[str, Path] = {}

    def _once(self, key: str, build: Callable[[Path], None]) -> Path:
        if key not in self._cache:
            path = self.base / key
            build(path)
            self._cache[key] = path
        return self._cache[key]

    def data(self) -> Path:
        """A build-data folder: 40 synthetic users over 40 items."""

        def build(out: Path) -> None:
            from data_builders.build import BuildDataConfig, build_data

            config = BuildDataConfig(
                source="synthetic",
                source_options={"num_users": 40, "num_items": 40},
                out_dir=str(out),
                progress=False,
                seed=1,
            )
            build_data(config)

        return self._once("data", build)

    def item_ids(self) -> list[str]:
        return pq.read_table(self.data() / "items.parquet").column("item_id").to_pylist()

    def index(self) -> Path:
        """The right item index: every item of `data()`, unique SIDs."""
        return self._once("index.json", lambda p: write_index(p, self.item_ids()))

    def model(self) -> Path:
        """A tiny model whose tokenizer has the index's itemic tokens, with item_index.json beside it."""

        def build(out: Path) -> None:
            from onereason.item_index import ItemIndex

            src = self._make_model(tuple(ItemIndex.load(self.index()).itemic_tokens()))
            shutil.copytree(src, out)
            shutil.copyfile(self.index(), out / "item_index.json")

        return self._once("model", build)

    def plain_model(self) -> Path:
        """A tiny model without itemic tokens (alignment not run), with the index beside it."""

        def build(out: Path) -> None:
            shutil.copytree(self._make_model(()), out)
            shutil.copyfile(self.index(), out / "item_index.json")

        return self._once("plain_model", build)

    def tasks(self) -> Path:
        """A build-tasks folder from `data()` and `index()`."""

        def build(out: Path) -> None:
            from data_builders.tasks.build import BuildTasksConfig, build_tasks

            build_tasks(
                BuildTasksConfig(data_dir=str(self.data()), item_index=str(self.index()), out_dir=str(out))
            )

        return self._once("tasks", build)


def write_index(path: Path, item_ids: list[str], collide: bool = False) -> Path:
    from onereason.item_index import ItemIndex

    n = len(item_ids)
    codes = np.zeros((n, 3), dtype=np.int64)
    if not collide:
        codes = np.stack([np.arange(n) // 16, (np.arange(n) // 4) % 4, np.arange(n) % 4], axis=1)
    ItemIndex(item_ids, codes, terms=[["lab", "tool"]] * n).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# The case table
# ---------------------------------------------------------------------------------------------


@dataclass
class Setup:
    argv: list[str]
    inputs: list[Path] = field(default_factory=list)  # hashed before and after (files or folders)
    out: Path | None = None  # the output path: absent after a failure unless it existed before
    cwd: Path | None = None


@dataclass
class Case:
    id: str
    make: Callable[[Path, World], Setup]
    code: int
    culprit: tuple[str, ...]  # substrings of the error line (names from the setup: "{tmp}" is replaced)
    data_loss: bool = False  # a case where an output folder named an input (data lost if mishandled)

    @property
    def command(self) -> str:
        return self.id.split(":")[0]


CASES: list[Case] = []


def case(id: str, code: int, *culprit: str, data_loss: bool = False):
    def register(make):
        CASES.append(Case(id, make, code, culprit, data_loss))
        return make

    return register


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def tabular(t: Path, log: Path, out: Path | None = None, *extra: str, **options) -> Setup:
    opts = {"interactions": str(log), **options}
    out = out or t / "out"
    argv = ["build-data", "--source", "tabular", "--source_options", json.dumps(opts)]
    return Setup([*argv, "--out_dir", str(out), "--progress", "false", *extra], [log], out)


GOOD_LOG = "user_id,item_id,timestamp\n" + "".join(
    f"u{u},i{(u + k) % 7},{100 + k}\n" for u in range(6) for k in range(4)
)


def recbole(t: Path, inter: str, out: Path | None = None, *extra: str) -> Setup:
    folder = t / "logs"
    write(folder / "data.inter", inter)
    write(
        folder / "data.item",
        "item_id:token\ttitle:token_seq\n" + "".join(f"i{k}\tthing {k}\n" for k in range(7)),
    )
    out = out or t / "out"
    argv = ["build-data", "--source", "recbole", "--source_options", json.dumps({"path": str(folder)})]
    return Setup([*argv, "--out_dir", str(out), "--progress", "false", *extra], [folder], out)


GOOD_INTER = "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
    f"u{u}\ti{(u + k) % 7}\t{100 + k}\n" for u in range(6) for k in range(4)
)


def config_file(t: Path, data: dict, name: str = "config.yaml") -> Path:
    return write(t / name, yaml.safe_dump(data))


# -- the command line and configs (exit code 2) ------------------------------------------------


@case("cli:unknown command", 2, "build-dat")
def _(t, w):
    return Setup(["build-dat", "--out_dir", str(t / "out")], out=t / "out")


@case("build-data:missing --config file", 2, "nope.yaml")
def _(t, w):
    return Setup(["build-data", "--config", str(t / "nope.yaml"), "--out_dir", str(t / "out")], out=t / "out")


@case("build-data:YAML syntax error", 2, "data.yaml", "YAML syntax error at line")
def _(t, w):
    cfg = write(t / "data.yaml", "source: tabular\nsource_options: {path: [x\n")
    return Setup(["build-data", "--config", str(cfg), "--out_dir", str(t / "out")], [cfg], t / "out")


@case("build-data:config is a list", 2, "data.yaml", "mapping")
def _(t, w):
    cfg = write(t / "data.yaml", "- source: tabular\n")
    return Setup(["build-data", "--config", str(cfg), "--out_dir", str(t / "out")], [cfg], t / "out")


@case("build-data:unknown key", 2, "kcor")
def _(t, w):
    cfg = config_file(t, {"source": "synthetic", "kcor": 5, "out_dir": str(t / "out")})
    return Setup(["build-data", "--config", str(cfg)], [cfg], t / "out")


@case("build-data:bad integer", 2, "--kcore", "abc")
def _(t, w):
    return Setup(["build-data", "--kcore", "abc", "--out_dir", str(t / "out")], out=t / "out")


@case("build-data:unknown split", 2, "split", "random")
def _(t, w):
    return Setup(["build-data", "--split", "random", "--out_dir", str(t / "out")], out=t / "out")


@case("build-data:unknown source", 2, "source", "csvv")
def _(t, w):
    return Setup(["build-data", "--source", "csvv", "--out_dir", str(t / "out")], out=t / "out")


@case("build-data:source_options not JSON", 2, "source_options")
def _(t, w):
    return Setup(["build-data", "--source_options", "{path: ", "--out_dir", str(t / "out")], out=t / "out")


@case("build-data:unknown loader option", 2, "source_options", "colums")
def _(t, w):
    log = write(t / "log.csv", GOOD_LOG)
    return tabular(t, log, None, colums={"user_id": "u"})


# -- build-data: bad files (exit code 1) -------------------------------------------------------


@case("build-data:interactions file missing", 1, "absent.csv")
def _(t, w):
    return tabular(t, t / "absent.csv")


@case("build-data:empty CSV", 1, "empty.csv")
def _(t, w):
    return tabular(t, write(t / "empty.csv", ""))


@case("build-data:CSV header only", 1, "tabular", "no interactions")
def _(t, w):
    return tabular(t, write(t / "log.csv", "user_id,item_id,timestamp\n"))


@case("build-data:CSV lacks a mapped column", 1, "log.csv", "timestamp")
def _(t, w):
    return tabular(t, write(t / "log.csv", "user_id,item_id\nu1,i1\n"))


@case("build-data:every timestamp unparseable", 1, "log.csv", "timestamp")
def _(t, w):
    return tabular(t, write(t / "log.csv", "user_id,item_id,timestamp\nu1,i1,yesterday\nu1,i2,soon\n"))


@case("build-data:timestamps x10^12", 1, "log.csv", "timestamp")
def _(t, w):
    rows = "".join(f"u{u},i{k},{1.6e21 + k}\n" for u in range(3) for k in range(3))
    return tabular(t, write(t / "log.csv", "user_id,item_id,timestamp\n" + rows))


@case("build-data:UTF-16 CSV", 1, "log.csv", "UTF-16")
def _(t, w):
    return tabular(t, write(t / "log.csv", GOOD_LOG.encode("utf-16")))


@case("build-data:non-UTF-8 row in strict mode", 1, "log.csv:3")
def _(t, w):
    raw = GOOD_LOG.encode().split(b"\n")
    raw[2] = b"u0,\xff\xfe,101"
    return tabular(t, write(t / "log.csv", b"\n".join(raw)), None, "--strict", "true")


@case("build-data:ragged CSV row in strict mode", 1, "log.csv", "fields")
def _(t, w):
    return tabular(t, write(t / "log.csv", GOOD_LOG + "u9,i1,5,extra,fields\n"), None, "--strict", "true")


@case("build-data:JSON array read as JSON lines proceeds", 0, "6 users")
def _(t, w):
    rows = [
        {"user_id": f"u{u}", "item_id": f"i{(u + k) % 7}", "timestamp": 100 + k}
        for u in range(6)
        for k in range(4)
    ]
    return tabular(t, write(t / "log.json", json.dumps(rows)))


@case("build-data:JSON array of non-objects", 1, "log.json", "element 0")
def _(t, w):
    return tabular(t, write(t / "log.json", "[1, 2, 3]"))


@case("build-data:corrupt Parquet", 1, "log.parquet")
def _(t, w):
    return tabular(t, write(t / "log.parquet", b"PAR1 this is not parquet"))


@case("build-data:items file missing", 1, "items file not found", "nothere.csv")
def _(t, w):
    log = write(t / "log.csv", GOOD_LOG)
    return tabular(t, log, None, items=str(t / "nothere.csv"))


@case("build-data:k-core removes everything", 1, "k-core", "kcore=50")
def _(t, w):
    return tabular(t, write(t / "log.csv", GOOD_LOG), None, "--kcore", "50")


@case("build-data:given split without one", 1, "ships no split")
def _(t, w):
    return tabular(t, write(t / "log.csv", GOOD_LOG), None, "--split", "given")


@case("build-data:RecBole NaN and inf timestamps are counted", 0, "malformed_row 2")
def _(t, w):
    return recbole(t, GOOD_INTER + "u1\ti2\tnan\nu2\ti3\tinf\n")


@case("build-data:RecBole NaN timestamp in strict mode", 1, "data.inter", "row 25")
def _(t, w):
    return recbole(t, GOOD_INTER + "u1\ti2\tnan\n", None, "--strict", "true")


@case("build-data:RecBole empty file", 1, "data.inter", "empty")
def _(t, w):
    return recbole(t, "")


@case("build-data:RecBole header without types", 1, "data.inter", "no type")
def _(t, w):
    return recbole(t, "user_id\titem_id\nu1\ti1\n")


@case("build-data:RecBole folder missing", 1, "nofolder")
def _(t, w):
    argv = [
        "build-data",
        "--source",
        "recbole",
        "--source_options",
        json.dumps({"path": str(t / "nofolder")}),
    ]
    return Setup([*argv, "--out_dir", str(t / "out")], out=t / "out")


@case("build-data:LC-Rec folder missing", 1, "nofolder")
def _(t, w):
    argv = ["build-data", "--source", "lcrec", "--source_options", json.dumps({"path": str(t / "nofolder")})]
    return Setup([*argv, "--out_dir", str(t / "out")], out=t / "out")


@case("build-data:MovieLens folder missing", 1, "nofolder")
def _(t, w):
    argv = [
        "build-data",
        "--source",
        "movielens",
        "--source_options",
        json.dumps({"path": str(t / "nofolder")}),
    ]
    return Setup([*argv, "--out_dir", str(t / "out")], out=t / "out")


@case("build-data:LC-Rec interactions not JSON", 1, "Tiny.inter.json", "JSON")
def _(t, w):
    folder = t / "lcrec"
    write(folder / "Tiny.inter.json", "{not json")
    write(folder / "Tiny.item.json", "{}")
    argv = [
        "build-data",
        "--source",
        "lcrec",
        "--source_options",
        json.dumps({"path": str(folder), "name": "Tiny"}),
    ]
    return Setup([*argv, "--out_dir", str(t / "out")], [folder], t / "out")


# -- build-data: output folders (the data-loss cases first) --------------------------------------


@case("build-data:out_dir is the input folder", 2, "is the input", data_loss=True)
def _(t, w):
    return recbole(t, GOOD_INTER, t / "logs")


@case(
    "build-data:out_dir is an unrelated non-empty folder",
    2,
    "not written by onereason",
    "--overwrite",
    data_loss=True,
)
def _(t, w):
    mine = t / "my_thesis"
    write(mine / "chapter1.tex", "\\section{Intro}")
    s = tabular(t, write(t / "log.csv", GOOD_LOG), mine)
    s.inputs.append(mine)
    return s


@case("build-data:out_dir is an existing file", 2, "report.pdf", "file", data_loss=True)
def _(t, w):
    pdf = write(t / "report.pdf", b"%PDF-1.4 precious")
    s = tabular(t, write(t / "log.csv", GOOD_LOG), pdf)
    s.inputs.append(pdf)
    return s


@case("build-data:out_dir is inside the input folder", 2, "inside the input")
def _(t, w):
    return recbole(t, GOOD_INTER, t / "logs" / "built")


@case("build-data:out_dir holds the input", 2, "holds the input")
def _(t, w):
    s = tabular(t, write(t / "data" / "log.csv", GOOD_LOG), t / "data", "--overwrite", "true")
    s.inputs.append(t / "data")
    return s


@case("build-data:out_dir is the current folder", 2, "current folder")
def _(t, w):
    work = write(t / "work" / "draft.txt", "keep").parent
    s = tabular(t, write(t / "log.csv", GOOD_LOG), Path("."))
    s.out, s.cwd = None, work
    s.inputs.append(work)
    return s


@case("build-data:out_dir under a file", 2, "notes.txt", "is a file")
def _(t, w):
    notes = write(t / "notes.txt", "keep me")
    s = tabular(t, write(t / "log.csv", GOOD_LOG), notes / "built")
    s.inputs.append(notes)
    return s


@case("build-data:rerun into its own output proceeds", 0, "6 users")
def _(t, w):
    log = write(t / "log.csv", GOOD_LOG)
    s = tabular(t, log, t / "out")
    from onereason.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(s.argv) == 0
    return s


@case("build-data:--overwrite replaces a user's folder on request", 0, "6 users")
def _(t, w):
    old = t / "old_build"
    write(old / "stale.txt", "x")
    return tabular(t, write(t / "log.csv", GOOD_LOG), old, "--overwrite", "true")


# -- build-ids -----------------------------------------------------------------------------------


def build_ids(t: Path, items: Path, *extra: str, out: Path | None = None) -> Setup:
    out = out or t / "ids"
    argv = [
        "build-ids",
        "--items_path",
        str(items),
        "--out_dir",
        str(out),
        "--term_generator",
        "none",
        *extra,
    ]
    return Setup(argv, [items], out)


@case("build-ids:items table missing", 1, "nope.parquet")
def _(t, w):
    return build_ids(t, t / "nope.parquet")


@case("build-ids:items table without title", 1, "items.parquet", "title")
def _(t, w):
    path = t / "items.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b"]}), path)
    return build_ids(t, path)


@case("build-ids:items table empty", 1, "items.parquet", "no items")
def _(t, w):
    path = t / "items.parquet"
    pq.write_table(pa.table({"item_id": pa.array([], pa.string()), "title": pa.array([], pa.string())}), path)
    return build_ids(t, path)


@case("build-ids:items table corrupt", 1, "items.parquet", "Parquet")
def _(t, w):
    return build_ids(t, write(t / "items.parquet", b"not parquet at all"))


@case("build-ids:published index missing (before encoding)", 1, "pub.json")
def _(t, w):
    s = build_ids(t, w.data(), "--published_index", str(t / "pub.json"), "--encoder", str(t / "no-encoder"))
    return s


@case("build-ids:published index not JSON", 1, "pub.json", "JSON")
def _(t, w):
    pub = write(t / "pub.json", "{oops")
    s = build_ids(t, w.data(), "--published_index", str(pub), "--encoder", str(t / "no-encoder"))
    s.inputs.append(pub)
    return s


@case("build-ids:published index lacks items (before encoding)", 1, "pub.json", "lacks")
def _(t, w):
    ids = w.item_ids()
    pub = write(
        t / "pub.json", json.dumps({i: ["<a_1>", "<b_2>", f"<c_{k}>"] for k, i in enumerate(ids[:5])})
    )
    s = build_ids(t, w.data(), "--published_index", str(pub), "--encoder", str(t / "no-encoder"))
    s.inputs.append(pub)
    return s


@case("build-ids:encoder path missing", 1, "no-encoder")
def _(t, w):
    return build_ids(t, w.data(), "--encoder", str(t / "no-encoder"))


@case("build-ids:out_dir is the data folder", 2, "is the input")
def _(t, w):
    return build_ids(t, w.data(), out=w.data())


@case("build-ids:out_dir is a user's folder", 2, "not written by onereason")
def _(t, w):
    mine = t / "mine"
    write(mine / "a.txt", "a")
    s = build_ids(t, w.data(), out=mine)
    s.inputs.append(mine)
    return s


@case("build-ids:zero levels", 2, "levels")
def _(t, w):
    return build_ids(t, w.data(), "--levels", "0")


@case("build-ids:unknown quantizer", 2, "quantizer", "kmeans++")
def _(t, w):
    return build_ids(t, w.data(), "--quantizer", "kmeans++")


# -- init-model ----------------------------------------------------------------------------------


@case("init-model:items_path missing", 1, "items_path", "none.parquet")
def _(t, w):
    out = t / "model"
    return Setup(["init-model", "--output_dir", str(out), "--items_path", str(t / "none.parquet")], out=out)


@case("init-model:item index not JSON", 1, "index.json")
def _(t, w):
    out, index = t / "model", write(t / "index.json", "[1, 2")
    return Setup(["init-model", "--output_dir", str(out), "--item_index", str(index)], [index], out)


@case("init-model:item index of another shape", 1, "index.json", "item index")
def _(t, w):
    out, index = t / "model", write(t / "index.json", "[1, 2]")
    return Setup(["init-model", "--output_dir", str(out), "--item_index", str(index)], [index], out)


@case("init-model:output_dir is a user's folder", 2, "not written by onereason")
def _(t, w):
    mine = t / "mine"
    write(mine / "weights.bin", b"\x00" * 16)
    return Setup(["init-model", "--output_dir", str(mine)], [mine], mine)


@case("init-model:unknown preset", 2, "preset", "huge")
def _(t, w):
    return Setup(["init-model", "--output_dir", str(t / "m"), "--preset", "huge"], out=t / "m")


@case("init-model:attention dropout out of range", 2, "attention_dropout", "1.5")
def _(t, w):
    return Setup(["init-model", "--output_dir", str(t / "m"), "--attention_dropout", "1.5"], out=t / "m")


# -- build-tasks ---------------------------------------------------------------------------------


def build_tasks(t: Path, data: Path, index: Path, *extra: str, out: Path | None = None) -> Setup:
    out = out or t / "tasks"
    argv = ["build-tasks", "--data_dir", str(data), "--item_index", str(index), "--out_dir", str(out), *extra]
    return Setup(argv, [data, index], out)


@case("build-tasks:data_dir missing", 1, "data_dir", "nodata")
def _(t, w):
    return build_tasks(t, t / "nodata", w.index())


@case("build-tasks:data_dir without splits", 1, "train.parquet")
def _(t, w):
    data = t / "data"
    shutil.copyfile(w.data() / "items.parquet", write(data / "items.parquet", b""))
    return build_tasks(t, data, w.index())


@case("build-tasks:item index missing", 1, "item_index", "noindex.json")
def _(t, w):
    return build_tasks(t, w.data(), t / "noindex.json")


@case("build-tasks:item index not JSON", 1, "bad.json")
def _(t, w):
    return build_tasks(t, w.data(), write(t / "bad.json", "{"))


@case("build-tasks:index covers a third of the items", 1, "unknown to the item index", "--allow_unknown")
def _(t, w):
    return build_tasks(t, w.data(), write_index(t / "index.json", w.item_ids()[:13]))


@case("build-tasks:--allow_unknown proceeds with the counts", 0, "unknown to the item index", "proceeding")
def _(t, w):
    return build_tasks(
        t, w.data(), write_index(t / "index.json", w.item_ids()[:13]), "--allow_unknown", "true"
    )


@case("build-tasks:another data set's index", 1, "unknown to the item index")
def _(t, w):
    return build_tasks(t, w.data(), write_index(t / "index.json", [f"other{k}" for k in range(40)]))


@case("build-tasks:every item shares one SID", 1, "share", "SID")
def _(t, w):
    return build_tasks(t, w.data(), write_index(t / "index.json", w.item_ids(), collide=True))


@case("build-tasks:out_dir is the data_dir", 2, "is the input", data_loss=True)
def _(t, w):
    data = t / "data"
    shutil.copytree(w.data(), data)
    return build_tasks(t, data, w.index(), out=data)


@case("build-tasks:mixture file missing", 1, "mixture", "mix.yaml")
def _(t, w):
    return build_tasks(t, w.data(), w.index(), "--mixture", str(t / "mix.yaml"))


@case("build-tasks:mixture YAML syntax error", 1, "mix.yaml", "line")
def _(t, w):
    mix = write(t / "mix.yaml", "tasks: [rec_sid\n")
    s = build_tasks(t, w.data(), w.index(), "--mixture", str(mix))
    s.inputs.append(mix)
    return s


@case("build-tasks:split file corrupt", 1, "test.parquet")
def _(t, w):
    data = t / "data"
    shutil.copytree(w.data(), data)
    write(data / "splits" / "test.parquet", b"broken")
    return build_tasks(t, data, w.index())


@case("build-tasks:tokenizer folder missing", 1, "tokenizer", "notok")
def _(t, w):
    return build_tasks(t, w.data(), w.index(), "--tokenizer", str(t / "notok"))


# -- train -----------------------------------------------------------------------------------


def train(t: Path, w: World, *extra: str, **fields) -> Setup:
    recipe = {
        "stage": "sft",
        "model_name_or_path": str(w.model()),
        "dataset_path": str(w.tasks()),
        "output_dir": str(t / "run"),
        "max_steps": 2,
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        **fields,
    }
    recipe = {k: v for k, v in recipe.items() if v is not None}
    cfg = config_file(t, recipe, "sft.yaml")
    inputs = [
        cfg,
        *[Path(v) for k, v in recipe.items() if k in ("model_name_or_path", "dataset_path", "item_index")],
    ]
    return Setup(
        ["train", "--config", str(cfg), *extra], [p for p in inputs if p.exists()], Path(recipe["output_dir"])
    )


@case("train:recipe without stage", 2, "stage")
def _(t, w):
    return train(t, w, stage=None)


@case("train:unknown stage", 2, "stage", "sftt")
def _(t, w):
    return train(t, w, stage="sftt")


@case("train:bad value", 2, "learning_rate")
def _(t, w):
    return train(t, w, "--learning_rate", "fast")


@case("train:model path missing (not 'no item_index')", 1, "model_name_or_path", "does not exist")
def _(t, w):
    return train(t, w, model_name_or_path=str(t / "nomodel"))


@case("train:model folder without config.json", 1, "config.json")
def _(t, w):
    folder = write(t / "model" / "tokenizer.json", "{}").parent
    return train(t, w, model_name_or_path=str(folder))


@case("train:model folder without tokenizer", 1, "no tokenizer")
def _(t, w):
    folder = t / "model"
    folder.mkdir()
    shutil.copyfile(w.model() / "config.json", folder / "config.json")
    return train(t, w, model_name_or_path=str(folder))


@case("train:dataset missing", 1, "dataset_path", "notasks")
def _(t, w):
    return train(t, w, dataset_path=str(t / "notasks"))


@case("train:dataset is a build-data folder", 1, "build-data", "build-tasks")
def _(t, w):
    return train(t, w, dataset_path=str(w.data()))


@case("train:item index missing", 1, "item_index", "noindex.json")
def _(t, w):
    return train(t, w, item_index=str(t / "noindex.json"))


@case("train:tokenizer lacks the itemic tokens", 1, "itemic tokens", "align")
def _(t, w):
    return train(t, w, model_name_or_path=str(w.plain_model()))


@case("train:index of other items", 1, "unknown to the item index")
def _(t, w):
    index = write_index(t / "index.json", [f"other{k}" for k in range(40)])
    return train(t, w, item_index=str(index))


@case("train:colliding index", 1, "share", "SID")
def _(t, w):
    return train(t, w, item_index=str(write_index(t / "index.json", w.item_ids(), collide=True)))


@case("train:output_dir is the dataset", 2, "output_dir", "is the input")
def _(t, w):
    return train(t, w, output_dir=str(w.tasks()))


@case("train:output_dir is the base model", 2, "output_dir", "is the input")
def _(t, w):
    return train(t, w, output_dir=str(w.model()))


@case("train:output_dir is a user's folder", 2, "not written by onereason")
def _(t, w):
    mine = write(t / "mine" / "notes.md", "x").parent
    s = train(t, w, output_dir=str(mine))
    s.inputs.append(mine)
    return s


@case("train:output_dir is a file", 2, "run.txt", "file")
def _(t, w):
    f = write(t / "run.txt", "x")
    s = train(t, w, output_dir=str(f))
    s.inputs.append(f)
    return s


# -- eval ------------------------------------------------------------------------------------


def evaluate(t: Path, *argv: str, inputs=(), out: Path | None = None) -> Setup:
    out = out or t / "eval"
    return Setup(["eval", *argv, "--out_dir", str(out)], [Path(p) for p in inputs], out)


@case("eval:model path missing (not 'no item_index')", 1, "models", "nomodel", "does not exist")
def _(t, w):
    return evaluate(t, "--models", str(t / "nomodel"), "--data_path", str(w.tasks()), inputs=[w.tasks()])


@case("eval:model folder without tokenizer", 1, "no tokenizer")
def _(t, w):
    folder = t / "model"
    folder.mkdir()
    shutil.copyfile(w.model() / "config.json", folder / "config.json")
    return evaluate(t, "--models", str(folder), "--data_path", str(w.tasks()), inputs=[w.tasks(), folder])


@case("eval:data_path missing", 1, "data_path", "nodata")
def _(t, w):
    return evaluate(t, "--models", str(w.model()), "--data_path", str(t / "nodata"), inputs=[w.model()])


@case("eval:data_path of an unknown kind", 1, "somefolder", "not a task dataset")
def _(t, w):
    folder = write(t / "somefolder" / "x.txt", "x").parent
    return evaluate(t, "--models", str(w.model()), "--data_path", str(folder), inputs=[w.model(), folder])


@case("eval:another data set's index", 1, "unknown to the item index", "--allow_unknown")
def _(t, w):
    index = write_index(t / "index.json", [f"other{k}" for k in range(40)])
    return evaluate(
        t,
        "--baselines",
        "popularity",
        "--item_index",
        str(index),
        "--data_path",
        str(w.data()),
        inputs=[w.data(), index],
    )


@case("eval:--allow_unknown proceeds with the counts", 0, "unknown to the item index", "proceeding")
def _(t, w):
    index = write_index(t / "index.json", w.item_ids()[:20])
    return evaluate(
        t, "--baselines", "popularity", "--item_index", str(index), "--data_path", str(w.data()),
        "--allow_unknown", "true", "--n_bootstrap", "10", inputs=[w.data(), index],
    )  # fmt: skip


@case("eval:item index missing", 1, "item_index", "noindex.json")
def _(t, w):
    return evaluate(
        t, "--models", str(w.model()), "--item_index", str(t / "noindex.json"), "--data_path", str(w.tasks()),
        inputs=[w.model(), w.tasks()],
    )  # fmt: skip


@case("eval:model without item_index.json", 1, "has no item_index.json", "--item_index")
def _(t, w):
    folder = t / "model"
    shutil.copytree(w.model(), folder)
    (folder / "item_index.json").unlink()
    return evaluate(t, "--models", str(folder), "--data_path", str(w.tasks()), inputs=[folder, w.tasks()])


@case("eval:colliding index", 1, "share", "SID")
def _(t, w):
    index = write_index(t / "index.json", w.item_ids(), collide=True)
    return evaluate(
        t,
        "--baselines",
        "popularity",
        "--item_index",
        str(index),
        "--data_path",
        str(w.data()),
        inputs=[w.data(), index],
    )


@case("eval:tokenizer lacks the itemic tokens", 1, "itemic tokens")
def _(t, w):
    return evaluate(
        t,
        "--models",
        str(w.plain_model()),
        "--data_path",
        str(w.tasks()),
        inputs=[w.plain_model(), w.tasks()],
    )


@case("eval:out_dir is the data", 2, "is the input")
def _(t, w):
    return evaluate(
        t,
        "--models",
        str(w.model()),
        "--data_path",
        str(w.tasks()),
        inputs=[w.model(), w.tasks()],
        out=w.tasks(),
    )


@case("eval:out_dir is a file", 2, "eval.txt", "file")
def _(t, w):
    f = write(t / "eval.txt", "x")
    return evaluate(
        t, "--models", str(w.model()), "--data_path", str(w.tasks()), inputs=[w.model(), w.tasks(), f], out=f
    )


@case("eval:unknown mode", 2, "modes", "thinking")
def _(t, w):
    return evaluate(t, "--models", str(w.model()), "--data_path", str(w.tasks()), "--modes", "thinking")


@case("eval:nothing to evaluate", 2, "nothing to evaluate")
def _(t, w):
    cfg = config_file(t, {"baselines": [], "data_path": str(w.tasks())}, "eval.yaml")
    return evaluate(t, "--config", str(cfg), inputs=[cfg])


# -- push ------------------------------------------------------------------------------------


def push(t: Path, model: Path, *extra: str, out: Path | None = None) -> Setup:
    out = out or t / "hub"
    return Setup(
        ["push", "--model_path", str(model), "--dry_run", "true", "--output_dir", str(out), *extra],
        [model],
        out,
    )


@case("push:model_path missing", 1, "model_path", "nomodel")
def _(t, w):
    return push(t, t / "nomodel")


@case("push:model folder without config.json", 1, "config.json")
def _(t, w):
    return push(t, write(t / "model" / "x.txt", "x").parent)


@case("push:model without item_index.json", 1, "item_index.json", "--item_index")
def _(t, w):
    folder = t / "model"
    shutil.copytree(w.model(), folder)
    (folder / "item_index.json").unlink()
    return push(t, folder)


@case("push:report missing", 1, "report", "report.json")
def _(t, w):
    return push(t, w.model(), "--report", str(t / "report.json"))


@case("push:report not JSON", 1, "report.json")
def _(t, w):
    report = write(t / "report.json", "{")
    s = push(t, w.model(), "--report", str(report))
    s.inputs.append(report)
    return s


@case("push:tokenizer lacks the itemic tokens", 1, "itemic tokens")
def _(t, w):
    return push(t, w.plain_model())


@case("push:output_dir is a user's folder", 2, "not written by onereason")
def _(t, w):
    mine = write(t / "mine" / "x.txt", "x").parent
    s = push(t, w.model(), out=mine)
    s.inputs.append(mine)
    return s


@case("push:output_dir is the model", 2, "is the input")
def _(t, w):
    return push(t, w.model(), out=w.model())


@case("push:no repo_id without --dry_run", 2, "repo_id")
def _(t, w):
    return Setup(["push", "--model_path", str(w.model())], [w.model()])


# -- quickstart ------------------------------------------------------------------------------


@case("quickstart:--out is a user's folder", 2, "--out", "not written by onereason")
def _(t, w):
    mine = write(t / "mine" / "x.txt", "x").parent
    return Setup(["quickstart", "--out", str(mine)], [mine], mine)


@case("quickstart:unknown step", 2, "unknown quickstart step", "sftt")
def _(t, w):
    return Setup(["quickstart", "--out", str(t / "qs"), "--stages", "sftt"])


# ---------------------------------------------------------------------------------------------
# Running a case
# ---------------------------------------------------------------------------------------------


def digest(paths) -> dict[str, str]:
    out = {}
    for root in paths:
        root = Path(root)
        files = (
            [root]
            if root.is_file()
            else sorted(p for p in root.rglob("*") if p.is_file())
            if root.exists()
            else []
        )
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        if not root.exists():
            out[str(root)] = "absent"
    return out


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    last_line: str
    traceback: bool
    data_lost: list[str]
    half_written: list[str]
    culprit_named: bool
    seconds: float


def run_case(c: Case, tmp: Path, world: World) -> Result:
    from onereason.cli import main

    tmp.mkdir(parents=True, exist_ok=True)
    setup = c.make(tmp, world)
    before = digest(setup.inputs)
    out_existed = setup.out is not None and setup.out.exists()
    siblings = (
        set(setup.out.parent.iterdir()) if setup.out is not None and setup.out.parent.is_dir() else set()
    )
    stdout, stderr = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    t0 = time.perf_counter()
    try:
        if setup.cwd is not None:
            os.chdir(setup.cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(list(setup.argv))
    finally:
        os.chdir(cwd)
    seconds = time.perf_counter() - t0
    after = digest(setup.inputs)
    lost = sorted(k for k in before if before[k] != after.get(k))
    half = []
    if c.code != 0 and setup.out is not None:
        if not out_existed and setup.out.exists():
            half.append(str(setup.out))
        if setup.out.parent.is_dir():
            new = set(setup.out.parent.iterdir()) - siblings
            half += sorted(str(p) for p in new if p.name.startswith(f".{setup.out.name}."))
    err, out = stderr.getvalue(), stdout.getvalue()
    lines = [line for line in err.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    culprits = [s.replace("{tmp}", str(tmp)) for s in c.culprit]
    text = last if c.code != 0 else out + err
    named = all(s in text for s in culprits) and (c.code == 0 or "error" in last)
    return Result(code, out, err, last, "Traceback" in err + out, lost, half, named, seconds)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_tiny_model):
    return World(tmp_path_factory.mktemp("bad-input-world"), lambda tokens: make_tiny_model(tokens))


def test_the_table_covers_every_command_with_enough_cases():
    from onereason.cli import COMMANDS

    commands = {c.command for c in CASES}
    assert set(COMMANDS) <= commands
    assert len(CASES) >= 60
    assert sum(c.data_loss for c in CASES) >= 3
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_bad_input(c: Case, tmp_path, world):
    r = run_case(c, tmp_path / "case", world)
    assert not r.traceback, r.stderr[-3000:]
    assert r.code == c.code, f"exit {r.code}, expected {c.code}; stderr: {r.stderr[-1500:]}"
    assert r.culprit_named, f"expected {c.culprit} in {r.last_line!r}" + (
        "" if c.code else f" / {r.stdout[-500:]}"
    )
    assert not r.data_lost, f"inputs changed: {r.data_lost}"
    assert not r.half_written, f"half-written output left: {r.half_written}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_in_train_saves_a_checkpoint_and_exits(signum, tmp_path, world):
    """SIGTERM / SIGINT during training: a checkpoint at the end of the step, exit 128+signal,
    one last line naming the checkpoint, no final model, inputs intact, no cache beside them."""
    import transformers.trainer as hf_trainer

    setup = train(tmp_path, world, max_steps=100000, save_steps=100000, logging_steps=100000)
    before = digest(setup.inputs)

    def send_when_training():
        deadline = time.time() + 120
        while time.time() < deadline:
            if any(getattr(cb, "training", False) for cb in hf_trainer.DEFAULT_CALLBACKS):
                time.sleep(0.2)
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.05)

    sender = threading.Thread(target=send_when_training, daemon=True)
    sender.start()
    from onereason.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(setup.argv)
    sender.join()
    err = stderr.getvalue()
    assert code == 128 + signum, err[-2000:]
    assert "Traceback" not in err
    checkpoints = sorted(setup.out.glob("checkpoint-*"))
    assert checkpoints and (checkpoints[-1] / "trainer_state.json").is_file()
    assert f"saved {checkpoints[-1]}" in err.strip().splitlines()[-1]
    assert not (setup.out / "model.safetensors").exists()  # not a finished model
    assert digest(setup.inputs) == before
    assert not list(Path(world.tasks()).rglob("cache-*.arrow"))  # caches never beside the input


def test_debug_shows_the_traceback(tmp_path, capsys):
    from onereason.cli import main

    log = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n")
    setup = tabular(tmp_path, log)
    assert main(setup.argv) == 1 and "Traceback" not in capsys.readouterr().err
    with pytest.raises(Exception, match="no interactions"):
        main([*setup.argv, "--debug"])


def test_the_installed_command_ends_in_one_line(tmp_path):
    """The real console script (a subprocess): exit code and one error line, no traceback."""
    import subprocess
    import sys

    script = Path(sys.executable).with_name("onereason")
    if not script.exists():
        pytest.skip("the onereason console script is not installed in this environment")
    mine = write(tmp_path / "mine" / "keep.txt", "keep").parent
    setup = tabular(tmp_path, write(tmp_path / "log.csv", GOOD_LOG), mine)
    before = digest([mine])
    done = subprocess.run([str(script), *setup.argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip().splitlines()[-1].startswith(f"error: build-data: out_dir {mine} already exists")
    )
    assert digest([mine]) == before
