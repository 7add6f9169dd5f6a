"""The summary table a person reads at the end of a run."""

from __future__ import annotations

from pathlib import Path

from bonsynth.generate import outputs


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:+.4f}" if x < 0 or abs(x) < 1e4 else f"{x:.4g}"
    return str(x)


def summary_table(manifest: dict, out: str | Path) -> str:
    c, s = manifest["counts"], manifest["summary"]
    out = Path(out)
    rows = [
        ("prompts", c["prompts"]),
        ("N (candidates per prompt)", manifest["config"]["n"]),
        ("candidates", c["candidates"]),
        ("mean reward, all candidates", _fmt(s["mean_reward_all"])),
        ("mean reward, selected", _fmt(s["mean_reward_selected"])),
        ("best-of-N gain", _fmt(s["bon_gain"])),
        ("KL bound (nats)", f"{s['kl_bound_nats']:.3f}"),
        ("distinct-2 (selected)" + ("" if s.get("distinct_2_exact", True) else ", HyperLogLog estimate"),
         f"{s['distinct_2_selected']:.3f}"),
        ("SFT rows", c["selected"]),
        ("DPO pairs", c["pairs"]),
    ]
    if c.get("prompts_truncated"):
        rows.append(("prompts left-truncated (too long)", c["prompts_truncated"]))
    if c.get("prompts_skipped"):
        rows.append(("prompts skipped (too long)", c["prompts_skipped"]))
    if "generated_tokens" in s:  # a pruned run (--prune-at/--prune-keep)
        rows.append(("candidates pruned", s["pruned"]))
        rows.append(("generated tokens (without pruning, est.)",
                     f"{s['generated_tokens']} ({s['generated_tokens_without_pruning']:.0f})"))
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k:<{width}}  {v}" for k, v in rows]
    lines.append("")
    for name in (*outputs.DATA_FILES, outputs.MANIFEST):
        lines.append(f"  {name:<{width}}  {out / name}")
    bar = "-" * (width + 30)
    return "\n".join(["best-of-N summary", bar, *lines, bar])
