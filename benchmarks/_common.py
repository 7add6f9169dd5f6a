"""Helpers the issue-8 benchmarks share: machine line, matmul peak, data, models, and BENCHMARKS.md rows.

Every benchmark times its baseline and bonsynth in the same process, on the same model and data, repeats
each several times (round-robin, so drifting machine load hits all methods alike) and reports the median.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
SECTION = "## Scoring and generation (issue 8)"
HH_RLHF = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-1500.jsonl"
HEADER = """# Benchmarks

Each section comes from the scripts in `benchmarks/` (see `benchmarks/README.md`). Every row states the
machine (CPU model, cores, load average while it ran), the exact command, the median of several repeats and
the ratio to the baseline timed in the same run, on the same model and data. A missed target is listed as
missed, with the reason.
"""

WORDS = (
    "the captain ship sails storm sea crew gold map island wizard spell tower potion knight dragon castle sword "
    "robot coffee station orbit star detective clue case rain city night friend hello thanks please help story"
).split()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_avg() -> float:
    return os.getloadavg()[0]


def machine(loads: list[float] | None = None) -> str:
    """'CPU model, N cores, load a–b' (the 1-minute load averages seen while the benchmark ran)."""
    text = f"{cpu_model()}, {os.cpu_count()} cores"
    if loads:
        lo, hi = min(loads), max(loads)
        text += f", load {lo:.1f}" if abs(hi - lo) < 0.05 else f", load {lo:.1f}–{hi:.1f}"
    return text


def command() -> str:
    """The exact command that ran this benchmark."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def matmul_peak_flops(n: int = 2048, repeats: int = 10, dtype: Any = None, device: str = "cpu") -> float:
    """The machine's practical matmul peak: median FLOP/s of an n x n GEMM (torch, default threads)."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / median(times)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), where bf16 beats fp32 3-4x."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (ties by order; fine for continuous scores)."""
    def ranks(xs: list[float]) -> list[int]:
        r = [0] * len(xs)
        for rank, i in enumerate(sorted(range(len(xs)), key=xs.__getitem__)):
            r[i] = rank
        return r

    ra, rb = ranks(a), ranks(b)
    n = len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb, strict=True)) / (n * (n * n - 1))


def round_robin(methods: dict[str, Callable[[], Any]], repeats: int, loads: list[float]) -> dict[str, list[float]]:
    """Wall seconds of each method, `repeats` times, interleaved; one untimed warm-up call each first."""
    for fn in methods.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for rep in range(repeats):
        for name, fn in methods.items():
            loads.append(load_avg())
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            print(f"# rep {rep}: {name} {times[name][-1]:.2f} s (load {loads[-1]:.1f})", file=sys.stderr)
    return times


def hh_texts() -> list[str] | None:
    """The real hh-rlhf transcripts from ../shared, or None on a machine without them."""
    if not HH_RLHF.exists():
        return None
    out = []
    for line in HH_RLHF.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        out += [row["chosen"], row["rejected"]]
    return out


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 200))) for _ in range(n)]


def corpus() -> tuple[list[str], str]:
    texts = hh_texts()
    if texts:
        return texts, "hh-rlhf harmless-base (../shared)"
    return synthetic_texts(3000), "synthetic word salad (../shared/data absent)"


def tokenizer_for(texts: list[str], vocab_size: int = 4096) -> Any:
    from bonsynth.demo.models import train_tokenizer

    tok = train_tokenizer(texts[:2000], vocab_size=vocab_size)
    tok.model_max_length = 1 << 20
    return tok


def text_of_tokens(tok: Any, stream: list[int], start: int, length: int) -> tuple[str, int]:
    """A text cut from a token stream whose re-tokenized length is close to `length`; (text, real length)."""
    text = tok.decode(stream[start : start + length])
    return text, len(tok(text, add_special_tokens=False)["input_ids"])


def token_stream(tok: Any, texts: list[str]) -> list[int]:
    ids: list[int] = []
    for t in texts:
        ids += tok(t, add_special_tokens=False)["input_ids"]
    return ids


def non_embedding_params(model: Any) -> int:
    """Parameters that take part in matmuls per token (embedding lookups are not matmuls)."""
    skip = set()
    for module in model.modules():
        if type(module).__name__ == "Embedding":
            skip.update(id(p) for p in module.parameters())
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def forward_flops(model: Any, lengths: list[int]) -> float:
    """Useful forward FLOPs for real (unpadded) sequences: 2 * params * tokens + causal attention."""
    cfg = model.config
    layers = getattr(cfg, "n_layer", None) or cfg.num_hidden_layers
    width = getattr(cfg, "n_embd", None) or cfg.hidden_size
    dense = 2 * non_embedding_params(model) * sum(lengths)
    # QK^T and AV: 4 * width FLOPs per (query, key) pair, L^2 / 2 pairs under the causal mask, per layer.
    attention = sum(2 * layers * width * n * n for n in lengths)
    return float(dense + attention)


def write_section(key: str, block: str) -> None:
    """Put `block` into BENCHMARKS.md under the issue-8 section, replacing this benchmark's previous block."""
    text = BENCHMARKS_MD.read_text(encoding="utf-8") if BENCHMARKS_MD.exists() else HEADER
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    body = f"{begin}\n{block.rstrip()}\n{end}\n"
    if begin in text and end in text:
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
        text = pattern.sub(lambda _m: body, text, count=1)
    else:
        if SECTION not in text:
            text = text.rstrip() + f"\n\n{SECTION}\n\n"
        start = text.index(SECTION) + len(SECTION)
        nxt = text.find("\n## ", start)
        at = len(text) if nxt < 0 else nxt + 1
        head, tail = text[:at].rstrip() + "\n\n", text[at:]
        text = head + body + ("\n" + tail if tail else "")
    BENCHMARKS_MD.write_text(_sorted_blocks(text), encoding="utf-8")
    print(f"# wrote {key} to {BENCHMARKS_MD}", file=sys.stderr)


def write_block_in(section: str, key: str, block: str) -> None:
    """Put `block` (which carries its own `<!-- key -->` markers) at the end of `section` of BENCHMARKS.md, or
    in place of its previous version; hand-written notes around it stay."""
    text = BENCHMARKS_MD.read_text(encoding="utf-8")
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _m: block, text, count=1, flags=re.S)
    else:
        start = text.index(section)
        nxt = text.find("\n## ", start + len(section))
        at = len(text) if nxt < 0 else nxt + 1
        text = text[:at].rstrip() + "\n\n" + block + "\n\n" + text[at:]
    BENCHMARKS_MD.write_text(text, encoding="utf-8")


def _sorted_blocks(text: str) -> str:
    """The issue-8 section's blocks in benchmark order (by their '### N.' heading), whatever ran first."""
    start = text.index(SECTION) + len(SECTION)
    nxt = text.find("\n## ", start)
    end = len(text) if nxt < 0 else nxt + 1
    found = [m.group(0) for m in re.finditer(r"<!-- (\w+) -->\n.*?<!-- /\1 -->\n", text[start:end], re.S)]
    if not found:
        return text

    def number(block: str) -> int:
        m = re.search(r"^### (\d+)\.", block, re.M)
        return int(m.group(1)) if m else 99

    rest = text[start:end]
    for block in found:
        rest = rest.replace(block, "")
    intro = rest.strip()  # hand-written notes in the section stay, above the blocks
    body = "\n\n" + (intro + "\n\n" if intro else "") + "\n".join(sorted(found, key=number))
    tail = text[end:]
    return text[:start] + body + ("\n" + tail if tail else "")


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# The RM recipe that issue 18's sweep chose on validation (BENCHMARKS.md, "Sweep"): the whole all-MiniLM-L6-v2,
# 1 epoch, lr 5e-5, batch 8, max length 128, linear schedule, no warm-up. bench_rm_sweep trains it as its
# reference run and bench_gold trains its gold RM with it, so the two can never drift apart.
RM_RECIPE: dict[str, Any] = {"epochs": 1.0, "lr": 5e-5, "batch_size": 8, "max_length": 128, "lr_scheduler": "linear",
                             "warmup_ratio": 0.0}


def rm_recipe_args(**override: Any) -> list[str]:
    """`bonsynth rm train` options for RM_RECIPE (a smoke run may override a size, e.g. epochs=0.5)."""
    recipe = {**RM_RECIPE, **override}
    unknown = set(recipe) - set(RM_RECIPE)
    if unknown:
        raise ValueError(f"not RM_RECIPE fields: {sorted(unknown)}")
    return [part for key, value in recipe.items() for part in (f"--{key.replace('_', '-')}", f"{value:g}"
                                                                if isinstance(value, float) else str(value))]


def today() -> str:
    return time.strftime("%Y-%m-%d")


def add_model_args(ap: Any) -> None:
    """The GPT-2-from-config size, repeat count and write switch that the scoring/generation scripts share."""
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-embd", type=int, default=384)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print the block, do not touch BENCHMARKS.md")


def publish(key: str, block: list[str], args: Any) -> None:
    """Print a result block, and record it in BENCHMARKS.md unless this is a --quick or --no-write run."""
    text = "\n".join(block)
    print(text)
    if not (args.quick or args.no_write):
        write_section(key, text)


def bonsynth_cli(args: list[str], timings: dict[str, float], step: str, env: dict[str, str] | None = None) -> str:
    """Run `bonsynth ARGS` in a child process, as a user would: stdout back, stderr streamed, wall time to `timings`.

    A failing step stops the benchmark with the step's name and command, never a half-filled result table.
    """
    import subprocess

    cmd = [sys.executable, "-m", "bonsynth.cli", *args]
    print(f"[{step}] bonsynth {' '.join(args)}", file=sys.stderr, flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO,
                          env=None if env is None else {**os.environ, **env})
    timings[step] = timings.get(step, 0.0) + time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"[{step}] failed with exit code {proc.returncode}: {' '.join(cmd)}")
    print(f"[{step}] done in {timings[step]:.0f} s", file=sys.stderr, flush=True)
    return proc.stdout


def timings_line(timings: dict[str, float]) -> str:
    """'Timings: step 12 s, ...; total N s.' for a benchmark that runs bonsynth steps one after another."""
    return ("Timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
            + f"; total {sum(timings.values()):.0f} s.")
