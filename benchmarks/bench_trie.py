"""Constrained beam search with the SID trie: speed and memory against unconstrained and a dict trie.

    OMP_NUM_THREADS=2 python benchmarks/bench_trie.py                 # 10k, 100k, 1M SIDs, CPU
    python benchmarks/bench_trie.py --device cuda --model_dir M       # a prebuilt model folder, on a GPU
    python benchmarks/bench_trie.py --build_only M                    # just build the model folder

The 'small' preset model (onereason.modeling.init_model, its tokenizer holding 3 levels x
256 itemic tokens plus the SID boundary tokens), 32 prompts x 20 beams
(`num_beams=20, num_return_sequences=20, do_sample=False`), `max_new_tokens` = SID length
+ 1. For each catalogue of random unique SIDs it times, interleaved, `--repeats` calls of

- unconstrained beam search (`min_new_tokens` = `max_new_tokens`, so it runs as many steps),
- `SIDTrie.logits_processor` (ours: vectorised over batch x beams),
- `prefix_allowed_tokens_fn` over a nested Python dict trie (what peers such as MiniOneRec do),

and prints per-call medians and the ratios of medians to unconstrained, the trie's tensor
bytes, the process RSS growth while building each trie, and the share of constrained
outputs that parse to a catalogue item.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from onereason.item_index import ItemIndex, SIDFormat
from onereason.trie import SIDTrie, sid_token_sequences

LEVELS, CODEBOOK = 3, 256
CORPUS = [
    "The user bought lab glassware, a beaker set and nitrile gloves; next they may want pipettes.",
    "Derivation: recent items share a category. Evolution: a long-term interest in measuring tools.",
    "Recommend the next item for this user given their history, oldest first.",
    "Hand tools, safety glasses, microscope slides, test tubes, digital calipers and multimeters.",
] * 50


def itemic_vocabulary() -> list[str]:
    fmt = SIDFormat()
    return [fmt.begin, fmt.end] + [fmt.token(lv, c) for lv in range(LEVELS) for c in range(CODEBOOK)]


def build_model(out: Path) -> Path:
    """The 'small' preset; pseudo-words pad the corpus so the BPE reaches the preset's 6,000 tokens."""
    from onereason.modeling import init_model  # needs trl (chat template); not needed with --model_dir

    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(20000)]
    filler = [" ".join(rng.choice(words, size=12)) for _ in range(5000)]
    return init_model(out, CORPUS + filler, preset="small", itemic_tokens=itemic_vocabulary(), seed=0)


def random_catalogue(n: int, seed: int = 0) -> ItemIndex:
    flat = np.random.default_rng(seed).choice(CODEBOOK**LEVELS, size=n, replace=False)
    codes = np.stack([flat // CODEBOOK**2, flat // CODEBOOK % CODEBOOK, flat % CODEBOOK], axis=1)
    return ItemIndex([str(i) for i in range(n)], codes, sid_format=SIDFormat())


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def dict_trie(sequences: np.ndarray) -> dict:
    root: dict = {}
    for seq in sequences.tolist():
        node = root
        for token in seq:
            node = node.setdefault(token, {})
    return root


def prefix_fn(root: dict, prompt_length: int, eos: int):
    """The peers' approach: walk a dict trie per row, in Python, every step."""

    def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        node = root
        for token in input_ids[prompt_length:].tolist():
            node = node.get(token)
            if node is None:
                return [eos]
        return list(node) if node else [eos]

    return allowed


def measure(n: int, model, tokenizer, base: dict, width: int, args) -> dict:
    """Median seconds per `generate` call for one catalogue size, and the trie's memory."""
    eos = tokenizer.eos_token_id
    index = random_catalogue(n)
    rss0 = rss_bytes()
    build_s, trie = timed(lambda: SIDTrie.from_index(index, tokenizer))
    trie_rss = rss_bytes() - rss0
    steps = trie.sid_length + 1
    runs = {
        "unconstrained": lambda: model.generate(**base, max_new_tokens=steps, min_new_tokens=steps),
        "trie": lambda: model.generate(
            **base, max_new_tokens=steps, logits_processor=[trie.logits_processor(width)]
        ),
    }
    dict_build_s = dict_rss = float("nan")
    if not args.skip_dict:
        sequences = sid_token_sequences(index, tokenizer)
        rss0 = rss_bytes()
        dict_build_s, root = timed(lambda: dict_trie(sequences))
        dict_rss = rss_bytes() - rss0
        fn = prefix_fn(root, width, eos)
        runs["dict"] = lambda: model.generate(**base, max_new_tokens=steps, prefix_allowed_tokens_fn=fn)
        del sequences
    with torch.inference_mode():
        for fn_ in runs.values():  # warm-up
            timed(fn_)
        times: dict[str, list[float]] = {k: [] for k in runs}
        outs = {}
        for _ in range(args.repeats):
            for name, fn_ in runs.items():
                seconds, outs[name] = timed(fn_)
                times[name].append(seconds)
    valid = {}
    for name in ("trie", "dict"):
        if name in outs:
            texts = tokenizer.batch_decode(outs[name][:, width:])
            valid[name] = sum(len(index.parse(t)) == 1 for t in texts) / len(texts)
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {
        "sids": n,
        "unconstrained_s": med["unconstrained"],
        "trie_s": med["trie"],
        "trie_ratio": med["trie"] / med["unconstrained"],
        "dict_s": med.get("dict", float("nan")),
        "dict_ratio": med.get("dict", float("nan")) / med["unconstrained"],
        "trie_MiB": trie.memory_bytes() / 2**20,
        "trie_rss_MiB": trie_rss / 2**20,
        "trie_build_s": build_s,
        "dict_rss_MiB": dict_rss / 2**20,
        "dict_build_s": dict_build_s,
        "valid_trie": valid.get("trie", float("nan")),
        "valid_dict": valid.get("dict", float("nan")),
    }
    print(
        "  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
        flush=True,
    )
    print(
        "  all calls (s): " + "; ".join(f"{k}: {', '.join(f'{x:.3f}' for x in v)}" for k, v in times.items())
    )
    return row


def same_on_device(index: ItemIndex, tokenizer, device: str) -> str:
    """`constrain_logits` on `device` equals the CPU result (random logits, valid SID answers)."""
    trie = SIDTrie.from_index(index, tokenizer)
    ids = torch.from_numpy(sid_token_sequences(index, tokenizer)[:64])
    ids = torch.cat([ids, torch.full((64, 1), tokenizer.eos_token_id)], dim=1)
    logits = torch.randn(64, ids.shape[1], len(tokenizer) + 5)
    start = torch.zeros(64, dtype=torch.long)
    cpu = trie.constrain_logits(logits, ids, start)
    dev = trie.constrain_logits(logits.to(device), ids.to(device), start.to(device)).cpu()
    same = torch.equal(torch.isinf(cpu), torch.isinf(dev)) and torch.allclose(
        cpu.nan_to_num(), dev.nan_to_num()
    )
    return f"constrain_logits on {device} equals CPU: {same}"


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--beams", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--model_dir", default=None, help="a folder made by --build_only (else built in a temp dir)"
    )
    parser.add_argument("--build_only", default=None, help="build the model folder here and exit")
    parser.add_argument("--skip_dict", action="store_true", help="skip the prefix_allowed_tokens_fn baseline")
    args = parser.parse_args()
    if args.build_only:
        print("built", build_model(Path(args.build_only)))
        return
    model_dir = Path(args.model_dir) if args.model_dir else build_model(Path(tempfile.mkdtemp()) / "small")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(args.device).eval()
    prompts = [" ".join(CORPUS[i % 4].split()[: 8 + i % 13]) for i in range(args.prompts)]
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(args.device)
    width = enc["input_ids"].shape[1]
    eos = tokenizer.eos_token_id
    print(
        f"device={args.device} torch threads={torch.get_num_threads()} model={model_dir} "
        f"params={sum(p.numel() for p in model.parameters()) / 1e6:.1f}M vocab={len(tokenizer)} "
        f"prompts={args.prompts} beams={args.beams} prompt width={width}"
    )
    base = dict(
        **enc,
        num_beams=args.beams,
        num_return_sequences=args.beams,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
    )
    rows = [measure(int(n), model, tokenizer, base, width, args) for n in args.sizes.split(",")]
    if args.device != "cpu":
        print(same_on_device(random_catalogue(1000), tokenizer, args.device))
    print()
    print(
        "| SIDs | unconstrained s | trie s | trie / unc. | dict-fn s | dict / unc. | trie MiB | trie RSS MiB "
        "| trie build s | dict RSS MiB | valid (trie) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['sids']:,} | {r['unconstrained_s']:.3f} | {r['trie_s']:.3f} | {r['trie_ratio']:.3f} | "
            f"{r['dict_s']:.3f} | {r['dict_ratio']:.3f} | {r['trie_MiB']:.1f} | {r['trie_rss_MiB']:.1f} | "
            f"{r['trie_build_s']:.2f} | {r['dict_rss_MiB']:.1f} | {r['valid_trie']:.0%} |"
        )


if __name__ == "__main__":
    main()
