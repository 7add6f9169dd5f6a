"""judge.json, judge.md and judge.png, written all-or-nothing.

Each file is built under a temporary name in the output directory first; only when all three are complete are
they renamed into place (judge.json last, through `write_json_atomic`), so a failure leaves no partial report.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from bonsynth.data.writers import fsync_dir
from bonsynth.errors import ConfigError, io_errors
from bonsynth.generate.outputs import write_json_atomic
from bonsynth.judge.run import JUDGE_JSON, JUDGE_MD, JUDGE_PNG


def _f(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def markdown(report: dict) -> str:
    """The report a person reads: the verdict, the warnings, the curve table and the counts."""
    lines = [f"# Gold judge: {report['judge']['name']} (N = {report['N']})", ""]
    for w in report["warnings"]:
        lines += [f"> **Warning:** {w}", ""]
    lines += [report["verdict"], ""]
    ci = report["gold_win_rate_ci95"]
    lines += [
        f"- gold win rate of the best-of-{report['N']} pick vs a random candidate: "
        f"{report['gold_win_rate_vs_random']:.3f}" + (f" (95% CI {ci[0]:.3f} to {ci[1]:.3f})" if ci else ""),
    ]
    if report["curve"] is None:
        lines += ["- pairwise judge: the pick was compared with each other candidate of its prompt (a random "
                  "candidate may be the pick itself, counted as a tie); no best-of-n curve."]
    else:
        lines += [
            f"- rank agreement (mean Kendall tau-b, proxy vs judge, within prompts): {_f(report['rank_agreement'], 3)}",
            f"- recommended n: {report['recommended_n']} (gold peaks at n = {report['peak_n']})",
            "",
            "| n | KL bound (nats) | proxy | gold | gold s.e. | gold oracle |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in report["curve"]:
            lines.append(f"| {r['n']} | {r['kl_bound']:.3f} | {_f(r['proxy_mean'])} | {_f(r['gold_mean'])} | "
                         f"{_f(r['gold_se'], 2)} | {_f(r['oracle_gold_mean'])} |")
    lines += ["", "Counts: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report["counts"].items()), ""]
    lines += ["Exact expectations over all size-n subsets of each prompt's candidates (no sampling); "
              "proxy = the run's --reward, gold = the judge.", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Gold and proxy best-of-n against sqrt(KL bound), as in Gao et al. 2022; the proxy on its own axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["curve"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    if rows is None:  # pairwise: the win rate and its CI against the coin-flip line
        try:
            rate, ci = report["gold_win_rate_vs_random"], report["gold_win_rate_ci95"] or [None, None]
            ax.axhline(0.5, ls="--", color="grey", label="no better than a random candidate")
            err = [[rate - ci[0]], [ci[1] - rate]] if ci[0] is not None else None
            ax.errorbar([0], [rate], yerr=err, marker="o", capsize=6, label="win rate, 95% bootstrap CI")
            ax.set_xticks([0], [f"best-of-{report['N']} pick vs random"])
            ax.set_ylim(0, 1)
            ax.set_ylabel("gold win rate (ties half)")
            ax.legend(fontsize=8)
            ax.set_title(f"pairwise judge {report['judge']['name']}, N = {report['N']}", fontsize=10)
            fig.tight_layout()
            fig.savefig(path, format="png")
        finally:
            plt.close(fig)
        return
    x = [math.sqrt(r["kl_bound"]) for r in rows]
    try:
        gold = [r["gold_mean"] for r in rows]
        se = [r["gold_se"] or 0.0 for r in rows]
        ax.errorbar(x, gold, yerr=se, marker="o", color="tab:blue", label="gold: judge of the proxy's pick")
        ax.plot(x, [r["oracle_gold_mean"] for r in rows], ls="--", color="tab:green", label="gold oracle (judge's own pick)")
        ax.set_xlabel("sqrt(KL bound) = sqrt(log n - (n-1)/n)")
        ax.set_ylabel(f"judge reward ({report['judge']['name']})")
        for xi, r in zip(x, rows, strict=True):
            ax.annotate(f"n={r['n']}", (xi, r["gold_mean"]), textcoords="offset points", xytext=(3, -11), fontsize=7)
        ax2 = ax.twinx()
        ax2.plot(x, [r["proxy_mean"] for r in rows], marker="s", color="tab:red", alpha=0.8, label="proxy (selecting RM)")
        ax2.set_ylabel("proxy reward (the run's --reward)", color="tab:red")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="best")
        ax.set_title(f"best-of-n under judge {report['judge']['name']}, N = {report['N']}", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def write_report(report: dict, out: str | Path) -> dict[str, Path]:
    """Write the three files into `out` (created if missing); all appear, or none."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    with io_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    tmp_md, tmp_png = out / (JUDGE_MD + ".tmp"), out / (JUDGE_PNG + ".tmp")
    try:
        with io_errors(tmp_md):
            with open(tmp_md, "w", encoding="utf-8") as fh:
                fh.write(markdown(report))
                fh.flush()
                os.fsync(fh.fileno())
        with io_errors(tmp_png):
            plot(report, tmp_png)
        with io_errors(out):
            os.replace(tmp_png, out / JUDGE_PNG)
            os.replace(tmp_md, out / JUDGE_MD)
        write_json_atomic(out / JUDGE_JSON, report)
        fsync_dir(out)
    finally:
        tmp_md.unlink(missing_ok=True)
        tmp_png.unlink(missing_ok=True)
    return {"json": out / JUDGE_JSON, "md": out / JUDGE_MD, "png": out / JUDGE_PNG}
