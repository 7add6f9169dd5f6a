"""`bonsynth judge`: re-score a generate run with a gold judge (not the RM that selected)."""

from __future__ import annotations

from pathlib import Path

import click

from bonsynth.cli.options import build_config, config_kwargs, config_options
from bonsynth.judge.run import JudgeConfig


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@config_options(JudgeConfig)
@click.option("--json", "as_json", is_flag=True, help="Print judge.json instead of the summary.")
def judge(run_dir: Path, as_json: bool, **kw) -> None:
    """Score every candidate of a `generate` run with a gold judge and chart best-of-n under it.

    Writes judge.json, judge.md and judge.png into --out (default RUN_DIR): proxy and gold reward of the
    proxy's best-of-n for n = 1, 2, 4, ..., N (exact over all subsets), the gold win rate of the pick against
    a random candidate with a bootstrap CI, rank agreement, and the n past which best-of-n stops helping.

    \b
    Example:
      bonsynth judge out/ --judge big-rm/
      bonsynth judge out/ --judge big-rm/ --judge other-rm/ --judge-weights 0.7,0.3
      OPENAI_API_KEY=... bonsynth judge out/ --judge openai:gpt-4o-mini --judge-mode pairwise
    """
    from bonsynth.cli.common import echo_json
    from bonsynth.judge.report import write_report
    from bonsynth.judge.run import judge_run

    cfg = build_config(JudgeConfig, run_dir=str(run_dir), **config_kwargs(JudgeConfig, kw))
    report = judge_run(cfg)
    paths = write_report(report, cfg.out or cfg.run_dir)
    if as_json:
        echo_json(report)
        return
    for w in report["warnings"]:
        click.echo(f"warning: {w}", err=True)
    ci = report["gold_win_rate_ci95"]
    c = report["counts"]
    click.echo(report["verdict"])
    parts = [f"win rate vs random {report['gold_win_rate_vs_random']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")]
    if report["curve"] is not None:
        tau = report["rank_agreement"]
        parts.append(f"rank agreement (Kendall tau) {'-' if tau is None else f'{tau:.3f}'}")
        parts.append(f"recommended n {report['recommended_n']}")
    click.echo("  " + "; ".join(parts))
    left_out = [f"{c[k]} {label}" for k, label in (("null_proxy_reward", "null proxy reward"),
                                                    ("nonfinite_judge", "non-finite judge score"),
                                                    ("unparsable", "unparsable judge answers")) if c.get(k)]
    click.echo(f"  prompts {c['prompts_used']} of {c['prompts']} used (skipped {c['prompts_skipped']})"
               + (f"; left out: {', '.join(left_out)}" if left_out else ""))
    click.echo(f"  {paths['json']}  {paths['md']}  {paths['png']}")
