"""`bonsynth serve` under bounded load (issue 15): throughput, latency, RSS, batching across requests.

A tiny GPT-2 policy (2 layers x 64, random weights) and a tiny GPT-2 RM of the same size, built from config
with a tokenizer trained on the spot (nothing downloaded), are served by `bonsynth serve --backend hf` in a
subprocess on 127.0.0.1. The load generator (httpx, asyncio) sends `--requests` completion requests at each
concurrency (best_of 4, `--max-tokens` new tokens, one seed per request), waits for every answer and stops.

Phases, one server each (started fresh, warmed up with a few untimed requests):

* batched: the default micro-batcher (`--batch-wait-ms 5 --max-batch 16`) at concurrency 1, 4 and 16;
* unbatched: `--batch-wait-ms 0 --max-batch 1` (every request generated and scored alone) at concurrency 16.

Measured: client-side throughput and p50/p95/p99 latency; errors; the server's RSS and peak RSS (VmRSS,
VmHWM) after warm-up and at the end; from `/metrics`: generate-call and RM-call wall time, candidates
scored and RM batch sizes. "Outside generation" is the share of the phase's wall time in which the server's
one generation thread was not generating: (wall - sum of generate calls) / sum of generate calls. RM
throughput is candidates scored per second of RM time.

SmolLM2-135M is too slow for 1,600 requests on this 2-core CPU (~1 s per request at best_of 4 and 16
tokens), so the tiny model stands in: the point is the server's own overhead and its batching.

Prints a block for BENCHMARKS.md (it does not write the file).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, WORDS, command, load_avg, machine, median, table  # noqa: E402


def build_models(out: Path) -> tuple[Path, Path]:
    from bonsynth.demo.models import save_model, tiny_causal_lm, tiny_reward_model, train_tokenizer
    from bonsynth.rm.meta import RMMeta

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(400)]
    tok = train_tokenizer(texts, vocab_size=400)
    policy = save_model(tiny_causal_lm(tok, seed=1), tok, out / "policy")
    rm = save_model(tiny_reward_model(tok, seed=2), tok, out / "rm")
    RMMeta(objective="pairwise").save(rm)
    return policy, rm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of the server, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def scrape(url: str) -> dict[str, float]:
    """Counter/histogram sums and counts of interest from /metrics (no labels: these are unlabelled)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    want = {"bonsynth_serve_generate_seconds_sum", "bonsynth_serve_generate_seconds_count",
            "bonsynth_serve_rm_seconds_sum", "bonsynth_serve_rm_seconds_count",
            "bonsynth_serve_candidates_scored_total", "bonsynth_serve_generate_batch_requests_sum"}
    out = dict.fromkeys(want, 0.0)
    for fam in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for s in fam.samples:
            if s.name in want:
                out[s.name] += s.value
    return out


class Server:
    def __init__(self, policy: Path, rm: Path, extra: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # One OpenMP thread per torch op: on this shared 2-core CPU, the generation and the RM threads each
        # spinning two OpenMP threads cost more than the tiny models' maths.
        env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "bonsynth.cli", "serve", "--policy", str(policy), "--reward", str(rm),
               "--backend", "hf", "--n", "4", "--port", str(self.port), "--log-level", "warning",
               "--max-pending", "256", *extra]
        self.log = log
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready")
            time.sleep(0.3)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


async def load(url: str, requests: int, concurrency: int, max_tokens: int, seed0: int) -> dict:
    import httpx

    rng = random.Random(seed0)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) for _ in range(requests)]
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0
    timing: list[dict] = []

    async def one(i: int, client: httpx.AsyncClient) -> None:
        nonlocal errors
        async with sem:
            t0 = time.perf_counter()
            try:
                r = await client.post(f"{url}/v1/completions", json={"prompt": prompts[i], "max_tokens": max_tokens,
                                                                    "best_of": 4, "seed": seed0 + i})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t0)
            if ok:
                timing.append(r.json()["bonsynth"]["timing"])
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*[one(i, client) for i in range(requests)])
        wall = time.perf_counter() - start
    return {"wall": wall, "latencies": sorted(latencies), "errors": errors, "timing": timing}


def pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def phase(server: Server, requests: int, concurrency: int, max_tokens: int, seed0: int, loads: list[float]) -> dict:
    before = scrape(server.url)
    res = asyncio.run(load(server.url, requests, concurrency, max_tokens, seed0))
    after = scrape(server.url)
    loads.append(load_avg())
    d = {k: after[k] - before[k] for k in after}
    gen_busy = d["bonsynth_serve_generate_seconds_sum"]
    rm_s = d["bonsynth_serve_rm_seconds_sum"]
    cands = d["bonsynth_serve_candidates_scored_total"]
    rm_calls = d["bonsynth_serve_rm_seconds_count"]
    gen_calls = d["bonsynth_serve_generate_seconds_count"]
    lat = res["latencies"]
    per_req = [(t["total_s"] - t["generate_s"]) / t["generate_s"] for t in res["timing"] if t["generate_s"] > 0]
    return {
        "concurrency": concurrency, "requests": requests, "wall": res["wall"], "errors": res["errors"],
        "throughput": requests / res["wall"], "p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "p99": pct(lat, 0.99),
        "outside_gen": (res["wall"] - gen_busy) / gen_busy if gen_busy else float("nan"),
        "outside_gen_req": median(per_req) if per_req else float("nan"),
        "rm_batch": cands / rm_calls if rm_calls else 0.0,
        "gen_batch": d["bonsynth_serve_generate_batch_requests_sum"] / gen_calls if gen_calls else 0.0,
        "rm_cands_per_s": cands / rm_s if rm_s else 0.0, "cands_per_s": cands / res["wall"],
        "rm_share": rm_s / res["wall"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="40 requests per phase, a sanity check")
    args = ap.parse_args()
    if args.quick:
        args.requests = 40
    loads = [load_avg()]
    rows, rss = [], {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        policy, rm = build_models(Path(tmp))
        for name, extra, levels in (("batched", [], (1, 4, 16)),
                                    ("unbatched", ["--batch-wait-ms", "0", "--max-batch", "1"], (16,))):
            server = Server(policy, rm, extra, Path(tmp) / f"{name}.log")
            try:
                server.wait_ready()
                asyncio.run(load(server.url, 16, 4, args.max_tokens, 10_000))  # warm-up, untimed
                start_mem = proc_status(server.proc.pid)
                for c in levels:
                    r = phase(server, args.requests, c, args.max_tokens, 1000 * c, loads)
                    r["server"] = name
                    rows.append(r)
                    print(r, file=sys.stderr)
                end_mem = proc_status(server.proc.pid)
                rss[name] = (start_mem, end_mem)
            finally:
                code = server.stop()
            rss[name] += (code,)
    total = time.perf_counter() - t_start

    by = {(r["server"], r["concurrency"]): r for r in rows}
    b16, u16 = by[("batched", 16)], by[("unbatched", 16)]
    rm_gain = b16["rm_cands_per_s"] / u16["rm_cands_per_s"] if u16["rm_cands_per_s"] else float("nan")
    e2e_gain = b16["cands_per_s"] / u16["cands_per_s"] if u16["cands_per_s"] else float("nan")
    errors = sum(r["errors"] for r in rows)
    drift = {name: (m[1]["VmRSS"] - m[0]["VmRSS"]) / m[0]["VmRSS"] for name, m in rss.items()}
    c1 = by[("batched", 1)]
    fmt = [[r["server"], r["concurrency"], r["requests"], f"{r['throughput']:.1f}", f"{r['p50'] * 1000:.0f}",
            f"{r['p95'] * 1000:.0f}", f"{r['p99'] * 1000:.0f}", r["errors"], f"{r['gen_batch']:.1f}",
            f"{r['rm_batch']:.1f}", f"{r['rm_cands_per_s']:.0f}", f"{r['cands_per_s']:.0f}",
            f"{100 * r['outside_gen']:.1f}%"] for r in rows]
    met = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    block = [
        f"### `bonsynth serve` under bounded load ({time.strftime('%Y-%m-%d')})",
        "",
        f"- machine: {machine(loads)}; server and load generator share it; whole run {total:.0f} s",
        f"- command: `nice -n 10 {command()}`",
        f"- hf backend, tiny GPT-2 policy and RM (2 × 64, random weights), best_of 4, {args.max_tokens} new tokens, "
        f"{args.requests} requests per row, one seed per request",
        "",
        table(["server", "concurrency", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors",
               "requests / generate call", "candidates / RM call", "RM candidates / RM-s", "candidates / s",
               "outside generation"], fmt),
        "",
        "| server | RSS after warm-up (MiB) | RSS at end (MiB) | change | peak RSS at start / end (MiB) | exit code after SIGTERM |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {name} | {m[0]['VmRSS']:.0f} | {m[1]['VmRSS']:.0f} | {100 * drift[name]:+.1f}% | "
          f"{m[0]['VmHWM']:.0f} / {m[1]['VmHWM']:.0f} | {m[2]} |" for name, m in rss.items()],
        "",
        "Targets:",
        f"- errors 0: {met(errors == 0)} ({errors})",
        f"- RSS flat within 5%: {met(all(abs(x) <= 0.05 for x in drift.values()))} "
        f"({', '.join(f'{k} {100 * v:+.1f}%' for k, v in drift.items())})",
        f"- time outside generation ≤ 10%: at concurrency 1, {100 * c1['outside_gen']:.1f}% of the generation "
        f"thread's busy time (per request, median {100 * c1['outside_gen_req']:.1f}%): "
        f"{met(c1['outside_gen'] <= 0.10)}; at 16, {100 * b16['outside_gen']:.1f}%: {met(b16['outside_gen'] <= 0.10)}",
        f"- cross-request batching ≥ 3× RM candidates per second at concurrency 16: {rm_gain:.2f}× "
        f"({b16['rm_cands_per_s']:.0f} vs {u16['rm_cands_per_s']:.0f} candidates per RM-second, "
        f"{b16['rm_batch']:.1f} vs {u16['rm_batch']:.1f} candidates per RM call): {met(rm_gain >= 3)}; "
        f"end to end {e2e_gain:.2f}× candidates per second",
    ]
    print("\n".join(block))


if __name__ == "__main__":
    main()
