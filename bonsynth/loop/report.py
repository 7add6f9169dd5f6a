"""What a person reads after each round: `report.md` with a metrics table, and two PNG plots.

- `reward_distribution.png`: the eval reward distribution of every round so far (violins, mean marked);
- `reward_vs_round.png`: mean, median, p90 and best-of-N eval reward against the round.

Plots use matplotlib's Agg backend (no display needed). The same writer serves each round directory and the
top-level loop directory, so the last round's report and the loop's report show the same history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DIST_PNG = "reward_distribution.png"
CURVE_PNG = "reward_vs_round.png"
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


def write_report(out_dir: Path, history: Sequence[RoundView], *, title: str, notes: Sequence[str] = ()) -> Path:
    """Write report.md and both plots into `out_dir`; returns the report path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_reward_distribution(history, out_dir / DIST_PNG)
    plot_reward_vs_round(history, out_dir / CURVE_PNG)
    last = history[-1]
    lines = [f"# {title}", ""]
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
