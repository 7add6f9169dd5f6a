"""Time `bonsynth merge` against `mergekit-yaml` on the same TIES config; print a BENCHMARKS.md table.

    python benchmarks/bench_merge.py [--mergekit-yaml PATH] [--n-embd 512] [--n-layer 8] [--n-models 4]

Builds N GPT-2 models from config (a base and N-1 "fine-tunes" = base + noise), writes one TIES config
(density 0.5, mixed weights), runs each tool once to warm the page cache and then `--repeats` times, alternating,
and reports the median wall time and the peak RSS of each run (measured in a fresh wrapper process with
`resource.getrusage(RUSAGE_CHILDREN)`, so it is the tool's own peak). It also checks that both outputs agree.
mergekit is optional: without it only bonsynth is timed. It is not a bonsynth dependency; install it in a
separate environment (see the report in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "sys.stderr.write(rc.stderr.decode()[-2000:] if rc.returncode else '')\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(u.ru_maxrss, u.ru_utime + u.ru_stime)\n"
    "sys.exit(rc.returncode)\n"
)

BONSYNTH_RUNNER = (
    "import sys; from bonsynth.cli.common import run_guarded; from bonsynth.cli.merge import merge; "
    "sys.argv[0] = 'bonsynth merge'; run_guarded(merge)"
)


def build_models(root: Path, n_models: int, n_embd: int, n_layer: int, vocab: int) -> list[Path]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from bonsynth.demo.models import train_tokenizer

    tok = train_tokenizer(["a tiny corpus for the benchmark tokenizer"] * 4, vocab_size=300)
    cfg = GPT2Config(vocab_size=vocab, n_embd=n_embd, n_layer=n_layer, n_head=8, n_positions=512)
    torch.manual_seed(0)
    base = GPT2LMHeadModel(cfg)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    paths = []
    for i in range(n_models):
        p = root / ("base" if i == 0 else f"ft{i}")
        if i:
            g = torch.Generator().manual_seed(i)
            base.load_state_dict({k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base_sd.items()})
        base.save_pretrained(p)
        tok.save_pretrained(p)
        paths.append(p)
    return paths


def ties_config(paths: list[Path]) -> str:
    weights = [0.5, 0.6, 0.05, 0.3, 0.2, 0.1]
    lines = ["models:", f"  - model: {paths[0]}"]
    for i, p in enumerate(paths[1:]):
        lines += [f"  - model: {p}", "    parameters:", f"      weight: {weights[i % len(weights)]}",
                  "      density: 0.5"]
    lines += ["merge_method: ties", f"base_model: {paths[0]}", "parameters:", "  normalize: true",
              "  int8_mask: true", "dtype: float32", ""]
    return "\n".join(lines)


def timed(cmd: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds) of one run of `cmd`."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr}")
    rss_kb, cpu = res.stdout.strip().splitlines()[-1].split()
    return wall, int(rss_kb) / 1024, float(cpu)


def max_abs_diff(a: Path, b: Path) -> float:
    from safetensors import safe_open

    def tensors(d: Path) -> dict:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                out.update({k: h.get_tensor(k) for k in h.keys()})
        return out

    ta, tb = tensors(a), tensors(b)
    common = set(ta) & set(tb)
    return max(float((ta[k].double() - tb[k].double()).abs().max()) for k in common)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}"


CROSSCHECK = {
    "linear": "models:\n  - model: {ft1}\n    parameters: {{weight: 0.3}}\n  - model: {ft2}\n    parameters: {{weight: 1.2}}\n"
              "merge_method: linear\ndtype: float32\n",
    "task_arithmetic": "models:\n  - model: {ft1}\n    parameters: {{weight: 0.5}}\n  - model: {ft2}\n"
                       "    parameters: {{weight: -0.25}}\nmerge_method: task_arithmetic\nbase_model: {base}\n"
                       "parameters: {{lambda: 0.7}}\ndtype: float32\n",
    "ties (density 0.3, rescale)": "models:\n  - model: {ft1}\n    parameters: {{weight: 0.5, density: 0.3}}\n"
                                   "  - model: {ft2}\n    parameters: {{weight: 0.6, density: 0.3}}\n  - model: {ft3}\n"
                                   "    parameters: {{weight: 0.05, density: 0.9}}\nmerge_method: ties\nbase_model: {base}\n"
                                   "parameters: {{rescale: true, int8_mask: true}}\ndtype: float32\n",
    "dare_ties (density 1)": "models:\n  - model: {ft1}\n    parameters: {{weight: 0.5}}\n  - model: {ft2}\n"
                             "    parameters: {{weight: 0.6}}\nmerge_method: dare_ties\nbase_model: {base}\ndtype: float32\n",
    "slerp (gradient + filter)": "slices:\n  - sources:\n      - model: {base}\n        layer_range: [0, 2]\n"
                                 "      - model: {ft1}\n        layer_range: [0, 2]\nmerge_method: slerp\nbase_model: {base}\n"
                                 "parameters:\n  t:\n    - filter: attn\n      value: [0, 1]\n    - value: 0.3\n"
                                 "dtype: float32\n",
    "passthrough (slice 1:2)": "slices:\n  - sources:\n      - model: {ft1}\n        layer_range: [1, 2]\n"
                               "merge_method: passthrough\ndtype: float32\n",
}


def crosscheck(mergekit_yaml: str) -> None:
    """Run each deterministic method through both tools on small models; print the largest difference."""
    root = Path(tempfile.mkdtemp(prefix="merge_xcheck_"))
    paths = build_models(root, 4, 64, 2, 1000)
    names = {"base": paths[0], "ft1": paths[1], "ft2": paths[2], "ft3": paths[3]}
    print("| method | max abs diff vs mergekit | tensors only in mergekit's output |")
    print("|---|---|---|")
    for label, template in CROSSCHECK.items():
        cfg = root / "x.yml"
        cfg.write_text(template.format(**names))
        a, b = root / "a", root / "b"
        for d in (a, b):
            shutil.rmtree(d, ignore_errors=True)
        subprocess.run([sys.executable, "-c", BONSYNTH_RUNNER, str(cfg), str(a)], check=True, capture_output=True)
        subprocess.run([mergekit_yaml, str(cfg), str(b), "--quiet"], check=True, capture_output=True)
        from safetensors import safe_open

        only = set()
        with safe_open(str(next(b.glob("*.safetensors"))), "pt") as hb, safe_open(str(a / "model.safetensors"), "pt") as ha:
            only = set(hb.keys()) - set(ha.keys())
        print(f"| {label} | {max_abs_diff(a, b):.3g} | {', '.join(sorted(only)) or '-'} |")
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mergekit-yaml", default=shutil.which("mergekit-yaml"), help="path of mergekit-yaml")
    ap.add_argument("--n-models", type=int, default=4, help="base + N-1 fine-tunes")
    ap.add_argument("--n-embd", type=int, default=512)
    ap.add_argument("--n-layer", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="keep models here (default: a temp dir)")
    ap.add_argument("--crosscheck", action="store_true", help="compare outputs method by method, then exit")
    args = ap.parse_args()
    if args.crosscheck:
        if not args.mergekit_yaml:
            raise SystemExit("--crosscheck needs mergekit-yaml (--mergekit-yaml PATH)")
        crosscheck(args.mergekit_yaml)
        return

    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_merge_"))
    root.mkdir(parents=True, exist_ok=True)
    paths = build_models(root, args.n_models, args.n_embd, args.n_layer, args.vocab)
    cfg = root / "ties.yml"
    cfg.write_text(ties_config(paths))

    tools = {"bonsynth merge": lambda out: [sys.executable, "-c", BONSYNTH_RUNNER, str(cfg), str(out),
                                             "--overwrite"]}
    shown = {"bonsynth merge": f"bonsynth merge {cfg.name} OUT"}
    if args.mergekit_yaml:
        tools["mergekit-yaml"] = lambda out: [args.mergekit_yaml, str(cfg), str(out), "--quiet"]
        shown["mergekit-yaml"] = f"mergekit-yaml {cfg.name} OUT --quiet"
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in tools}
    outs = {name: root / f"out-{i}" for i, name in enumerate(tools)}
    for rep in range(args.repeats + 1):  # run 0 warms the page cache and is not counted
        for name, make in tools.items():
            shutil.rmtree(outs[name], ignore_errors=True)
            wall, rss, cpu = timed(make(outs[name]))
            if rep:
                results[name].append((wall, rss, cpu))
            print(f"# {name} run {rep}: {wall:.2f} s wall, {cpu:.2f} s CPU, {rss:.0f} MiB", file=sys.stderr)

    size_mb = sum(f.stat().st_size for f in paths[0].glob("*.safetensors")) / 2**20
    print(f"\n### merge: TIES, {args.n_models} GPT-2 models (n_embd={args.n_embd}, {args.n_layer} layers, "
          f"vocab {args.vocab}, {size_mb:.0f} MiB each, float32), density 0.5\n")
    print("| machine | command | median wall (s) | median CPU (s) | median peak RSS (MiB) | wall vs mergekit |")
    print("|---|---|---|---|---|---|")
    med = {n: [statistics.median(x[i] for x in r) for i in range(3)] for n, r in results.items()}
    ref = med.get("mergekit-yaml")
    for name in tools:
        wall, rss, cpu = med[name]
        ratio = f"{wall / ref[0]:.2f}x" if ref else "n/a"
        print(f"| {machine()} | `{shown[name]}` | {wall:.2f} | {cpu:.2f} | {rss:.0f} | {ratio} |")
    print(f"\nload average during the run (1/5/15 min): {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if len(outs) == 2:
        a, b = outs.values()
        print(f"\nmax |bonsynth - mergekit| over all tensors: {max_abs_diff(a, b):.3g}")
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
