"""Bad input across every command: how many cases end cleanly, how many lose data.

    python benchmarks/bench_bad_input.py            # the summary line, failures listed
    python benchmarks/bench_bad_input.py -v         # one line per case

Runs the case table of `tests/test_bad_input.py` (one list of cases) through the real CLI
in-process, each case in a fresh temporary folder with its own input files, and prints

    cases N / tracebacks T / data lost L

(goal: >= 60 / 0 / 0), then how many cases had the wrong exit code, an error line that
does not name the culprit, half-written output, or an error the CLI did not expect
("unexpected ...": a bug turned into one line). Tiny models are built on the spot, offline.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of the shared inputs' builds
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_bad_input import CASES, World, run_case  # noqa: E402

CORPUS = [
    "Derivation: the recent items share a category. Evolution: a long-term interest in lab glassware.",
    "What will the user interact with next? The user's history, oldest first:",
    "Hand tools, measuring instruments, safety gloves, microscope slides, test tubes and pipettes.",
] * 20


def tiny_model_maker(base: Path):
    from onereason.modeling import init_model

    cache: dict[tuple, Path] = {}

    def make(itemic_tokens=()) -> Path:
        key = tuple(itemic_tokens)
        if key not in cache:
            out = base / f"tiny-{len(cache)}"
            init_model(out, CORPUS, preset="tiny", itemic_tokens=list(key), seed=0)
            cache[key] = out
        return cache[key]

    return make


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    parser.add_argument("-k", default="", help="only cases whose id contains this")
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)  # the cases' own log lines are captured per case anyway
    cases = [c for c in CASES if args.k in c.id]
    counts: Counter = Counter()
    problems: list[str] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-bad-input-") as tmp:
        base = Path(tmp)
        world = World(base / "world", tiny_model_maker(base / "models"))
        for n, case in enumerate(cases):
            r = run_case(case, base / f"case-{n}", world)
            checks = {
                "traceback": r.traceback,
                "data lost": bool(r.data_lost),
                "wrong exit code": r.code != case.code,
                "culprit not named": not r.culprit_named,
                "half-written output": bool(r.half_written),
                "unexpected error": "please report it" in r.last_line,  # onereason.errors.describe
            }
            for name, bad in checks.items():
                counts[name] += bad
            failed = [name for name, bad in checks.items() if bad]
            if failed:
                problems.append(f"  {case.id}: {', '.join(failed)} (exit {r.code}): {r.last_line[:300]}")
            if args.verbose:
                mark = "FAIL " + ",".join(failed) if failed else "ok"
                print(f"{r.seconds:6.2f}s exit {r.code} {mark:<6} {case.id}: {r.last_line[:160]}", flush=True)
    seconds = time.perf_counter() - start
    print(
        f"cases {len(cases)} / tracebacks {counts['traceback']} / data lost {counts['data lost']}"
        f"   (data-loss reproductions {sum(c.data_loss for c in cases)}, commands {len({c.command for c in cases})})"
    )
    print(
        f"wrong exit code {counts['wrong exit code']}, culprit not named {counts['culprit not named']}, "
        f"half-written output {counts['half-written output']}, unexpected errors {counts['unexpected error']}; "
        f"{seconds:.1f} s"
    )
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
