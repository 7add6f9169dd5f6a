"""What a person reads after each round: `report.md` with a metrics table, and two PNG plots.

- `reward_distribution.png`: the eval reward distribution of every round so far (violins, mean marked);
- `reward_vs_round.png`: mean, median, p90 and best-of-N eval reward against the round;
- with `eval.judge`, `gold_vs_round.png`: gold (judge) and proxy mean against the round, for the best-of-N
  arm and, with `control: random`, the control arm; and a "Gold judge" section with the gold table and a
  plain verdict (does gold rise with the proxy, or is the proxy over-optimised; did selection beat the control).

Plots use matplotlib's Agg backend (no display needed). The same writer serves each round directory and the
top-level loop directory, so the last round's report and the loop's report show the same history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DIST_PNG = "reward_distribution.png"
CURVE_PNG = "reward_vs_round.png"
GOLD_PNG = "gold_vs_round.png"
REPORT_MD = "report.md"


@dataclass
class RoundView:
    """One column of the history: the baseline (round None) or a finished round."""

    label: str  # "base", "round 0", ...
    round: int | None
    metrics: dict
    rewards: list[float]
    train: dict = field(default_factory=dict)
    generate: dict = field(default_factory=dict)
    rm_update: dict = field(default_factory=dict)
    gold: dict = field(default_factory=dict)  # gold-judge metrics (bonsynth.loop.gold.gold_metrics)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_reward_distribution(history: Sequence[RoundView], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(history) + 2), 4))
    data = [h.rewards for h in history]
    pos = list(range(len(history)))
    if any(len(set(d)) > 1 for d in data):
        parts = ax.violinplot([d if len(set(d)) > 1 else d + [d[0] + 1e-9] for d in data], positions=pos,
                              showextrema=False, showmedians=True)
        for body in parts["bodies"]:
            body.set_alpha(0.5)
    ax.scatter(pos, [h.metrics["reward_mean"] for h in history], marker="o", color="black", zorder=3, label="mean")
    ax.set_xticks(pos, [h.label for h in history])
    ax.set_ylabel("RM reward (eval samples, before selection)")
    ax.set_title("Reward distribution per round")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def plot_reward_vs_round(history: Sequence[RoundView], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = list(range(len(history)))
    for key, label in (("reward_mean", "mean"), ("reward_median", "median"), ("reward_p90", "p90"),
                       ("best_of_n_mean", "best-of-N mean")):
        ax.plot(xs, [h.metrics[key] for h in history], marker="o", label=label)
    ax.set_xticks(xs, [h.label for h in history])
    ax.set_xlabel("round")
    ax.set_ylabel("RM reward on the eval prompts")
    ax.set_title("Reward against round")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def _f(x, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def metrics_table(history: Sequence[RoundView]) -> list[str]:
    cols = [
        ("round", lambda h: h.label),
        ("mean", lambda h: _f(h.metrics["reward_mean"])),
        ("median", lambda h: _f(h.metrics["reward_median"])),
        ("p90", lambda h: _f(h.metrics["reward_p90"])),
        ("best-of-N", lambda h: _f(h.metrics["best_of_n_mean"])),
        ("BoN gain", lambda h: _f(h.metrics["bon_gain"])),
        ("len mean", lambda h: _f(h.metrics["length_mean"], 1)),
        ("len p90", lambda h: _f(h.metrics["length_p90"], 1)),
        ("distinct-2", lambda h: _f(h.metrics["distinct_2"], 3)),
        ("win rate vs prev", lambda h: _f(h.metrics.get("win_rate_vs_previous"), 3)),
        ("train rows", lambda h: _f(h.train.get("num_examples")) if h.train else "-"),
        ("train loss", lambda h: _f(h.train.get("train_loss")) if h.train else "-"),
    ]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for h in history:
        lines.append("| " + " | ".join(fn(h) for _, fn in cols) + " |")
    return lines


def plot_gold_vs_round(history: Sequence[RoundView], control: Sequence[RoundView] | None, path: Path) -> None:
    """Gold (left axis) and proxy (right axis) eval mean per round, per arm."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax2 = ax.twinx()
    xs = list(range(len(history)))
    arms = [("best-of-N", history, "tab:blue")] + ([("control (random)", control, "tab:orange")] if control else [])
    for name, hist, color in arms:
        n = min(len(hist), len(xs))
        ax.plot(xs[:n], [h.gold.get("gold_mean") for h in hist[:n]], marker="o", color=color, label=f"{name}: gold")
        ax2.plot(xs[:n], [h.metrics["reward_mean"] for h in hist[:n]], marker="x", linestyle="--", color=color,
                 alpha=0.6, label=f"{name}: proxy")
    ax.set_xticks(xs, [h.label for h in history])
    ax.set_xlabel("round")
    ax.set_ylabel("gold (judge) mean, eval samples")
    ax2.set_ylabel("proxy RM mean, eval samples")
    ax.set_title("Gold judge and proxy against round")
    ax.grid(alpha=0.3)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def _wr(g: dict, key: str) -> str:
    """A gold win rate with its 95% CI, e.g. `0.612 [0.540, 0.690]`."""
    v, ci = g.get(f"gold_win_rate_vs_{key}"), g.get(f"gold_win_rate_vs_{key}_ci95")
    if v is None:
        return "-"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def gold_table(history: Sequence[RoundView], control: Sequence[RoundView] | None) -> list[str]:
    """Per round: proxy and gold of the best-of-N arm, and beside it the control arm's."""
    ctl = {h.round: h for h in control or []}
    cols = ["round", "proxy mean", "gold mean", "gold win vs prev [95% CI]", "gold win vs base [95% CI]"]
    if control is not None:
        cols += ["control proxy mean", "control gold mean", "control gold win vs base [95% CI]",
                 "best-of-N vs control [95% CI]"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for h in history:
        row = [h.label, _f(h.metrics["reward_mean"]), _f(h.gold.get("gold_mean")), _wr(h.gold, "previous"),
               _wr(h.gold, "base")]
        if control is not None:
            c = ctl.get(h.round) if h.round is not None else h  # the base policy is both arms' start
            row += ([_f(c.metrics["reward_mean"]), _f(c.gold.get("gold_mean")), _wr(c.gold, "base"),
                     _wr(h.gold, "control")] if c else ["-"] * 4)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def gold_verdict(history: Sequence[RoundView], control: Sequence[RoundView] | None) -> list[str]:
    """Plain sentences: does gold rise with the proxy (or is the proxy over-optimised), and did selection help."""
    base, last = history[0], history[-1]
    if last.round is None:
        return ["Only the base policy has been evaluated so far."]
    out = []
    g = last.gold
    wr, ci = g.get("gold_win_rate_vs_base"), g.get("gold_win_rate_vs_base_ci95")
    d_proxy = last.metrics["reward_mean"] - base.metrics["reward_mean"]
    stats = (f"proxy mean {base.metrics['reward_mean']:.4g} -> {last.metrics['reward_mean']:.4g}, gold mean "
             f"{base.gold.get('gold_mean', 0):.4g} -> {g.get('gold_mean', 0):.4g}, gold win rate against the base "
             f"policy {_wr(g, 'base')}")
    if wr is None or not ci:
        out.append(f"No gold comparison with the base policy for {last.label}.")
    elif d_proxy > 0 and ci[1] < 0.5:
        out.append(f"**Over-optimisation: gold got worse while the proxy improved** ({last.label} against base: "
                   f"{stats}; the CI is below 50%). The policy is learning what the proxy RM rewards, not what the "
                   "judge does.")
    elif d_proxy > 0 and ci[0] <= 0.5:
        out.append(f"**Gold does not improve while the proxy does** ({last.label} against base: {stats}; the CI "
                   "includes 50%). The proxy gain is not confirmed by the judge: possible over-optimisation of "
                   "the proxy RM.")
    elif d_proxy > 0 and ci[0] > 0.5:
        out.append(f"Gold improves with the proxy: {last.label} beats the base policy under the judge ({stats}; CI "
                   "above 50%).")
    else:
        gold_says = ("gold improved anyway (CI above 50%)" if ci[0] > 0.5 else
                     "gold got worse too (CI below 50%)" if ci[1] < 0.5 else "gold did not move measurably")
        out.append(f"The proxy did not rise ({last.label} against base: {stats}); {gold_says}.")
    for prev, h in zip(history, history[1:], strict=False):
        ci_p = h.gold.get("gold_win_rate_vs_previous_ci95")
        if h.metrics["reward_mean"] > prev.metrics["reward_mean"] and ci_p and ci_p[1] < 0.5:
            out.append(f"- {h.label}: the proxy rose over {prev.label} but gold fell (gold win rate against the "
                       f"previous round {_wr(h.gold, 'previous')}).")
    if control is not None:
        wc, cc = g.get("gold_win_rate_vs_control"), g.get("gold_win_rate_vs_control_ci95")
        if wc is None or not cc:
            out.append("No control-arm comparison yet.")
        else:
            tail = f"best-of-N against the control arm under the judge, {last.label}: {_wr(g, 'control')}"
            if cc[0] > 0.5:
                out.append(f"Selection helped: {tail}, above 50%.")
            elif cc[1] < 0.5:
                out.append(f"Selection hurt: the control arm (random candidates) beats best-of-N ({tail}, below 50%).")
            else:
                out.append(f"Selection did not measurably help beyond fine-tuning on random samples ({tail}; the CI "
                           "includes 50%).")
    return out


def write_report(out_dir: Path, history: Sequence[RoundView], *, title: str, notes: Sequence[str] = (),
                 control: Sequence[RoundView] | None = None, warnings: Sequence[str] = ()) -> Path:
    """Write report.md and the plots into `out_dir`; returns the report path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_reward_distribution(history, out_dir / DIST_PNG)
    plot_reward_vs_round(history, out_dir / CURVE_PNG)
    has_gold = any(h.gold for h in history)
    if has_gold:
        plot_gold_vs_round(history, control, out_dir / GOLD_PNG)
    last = history[-1]
    lines = [f"# {title}", ""]
    lines.extend(f"> **warning:** {w}" for w in warnings)
    if warnings:
        lines.append("")
    lines.extend(notes)
    if notes:
        lines.append("")
    lines += [
        "Eval metrics are over policy samples on the fixed eval prompts, before any selection; the win rate",
        "compares each sample with the previous policy's sample drawn with the same seed (ties count half).",
        "",
        *metrics_table(history),
        "",
        f"![reward distribution per round]({DIST_PNG})",
        "",
        f"![reward against round]({CURVE_PNG})",
        "",
    ]
    if has_gold:
        judge = next((h.gold.get("judge", {}).get("name") for h in history if h.gold), None)
        lines += [
            f"## Gold judge ({judge})" if judge else "## Gold judge",
            "",
            *gold_verdict(history, control),
            "",
            "Gold is the judge's score of the same eval samples (the judge never selects). A gold win rate compares",
            "two runs per eval prompt: the chance that a random eval sample of one beats a random eval sample of",
            "the other under the judge (ties half), averaged over prompts; the 95% CI is a bootstrap over prompts.",
            *(["The control arm trains on one random candidate per prompt instead of the best, from its own "
               "previous policy."] if control is not None else []),
            "",
            *gold_table(history, control),
            "",
            f"![gold and proxy against round]({GOLD_PNG})",
            "",
        ]
    if control is not None and not has_gold:
        ctl = {h.round: h for h in control}
        lines += ["## Control arm (random candidates)", "",
                  "The control arm trains on one random candidate per prompt instead of the best. Without",
                  "`eval.judge` the arms can only be compared under the proxy RM, which the best-of-N arm is",
                  "trained towards; set `eval.judge` to compare them under a gold judge.", "",
                  "| round | proxy mean | control proxy mean |", "|---|---|---|"]
        for h in history:
            c = h if h.round is None else ctl.get(h.round)
            lines.append(f"| {h.label} | {_f(h.metrics['reward_mean'])} | "
                         f"{_f(c.metrics['reward_mean']) if c else '-'} |")
        lines.append("")
    if last.generate:
        g = last.generate
        lines += [
            f"## Best-of-N data of {last.label}",
            "",
            f"- prompts: {g.get('prompts')}, candidates: {g.get('candidates')}, SFT rows: {g.get('selected')}, "
            f"DPO pairs: {g.get('pairs')}",
            f"- mean reward, all candidates: {_f(g.get('mean_reward_all'))}; selected: "
            f"{_f(g.get('mean_reward_selected'))}; best-of-N gain: {_f(g.get('bon_gain'))}",
            "",
        ]
    if last.train:
        t = last.train
        if t.get("skipped"):
            lines += [f"## Update of {last.label}", "", f"- skipped: {t['skipped']}", ""]
        else:
            lines += [
                f"## Update of {last.label} ({t.get('method')}{', LoRA' if t.get('lora') else ''})",
                "",
                f"- examples: {t.get('num_examples')}, steps: {t.get('steps')}, learning rate: {t.get('learning_rate')}",
                f"- loss: first {_f(t.get('loss_first'))}, last {_f(t.get('loss_last'))}, mean {_f(t.get('train_loss'))}",
                "",
            ]
    if last.rm_update:
        r = last.rm_update
        lines += [f"## RM update of {last.label}", ""]
        if r.get("skipped"):
            lines += [f"- skipped: {r['skipped']}", ""]
        else:
            lines += [
                f"- pairs: {r.get('num_pairs')} (labeller ties dropped: {r.get('labeler_ties')}), "
                f"labeller agrees with the RM on {_f(r.get('agreement'), 3)} of them",
                f"- train loss: {_f(r.get('train_loss'))}",
                "",
            ]
    path = out_dir / REPORT_MD
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)
    return path
