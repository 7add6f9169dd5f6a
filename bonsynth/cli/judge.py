"""`bonsynth judge`: re-score a generate run with a gold judge (not the RM that selected)."""

from __future__ import annotations

from pathlib import Path

import click

from bonsynth.cli.generate import parse_weights
from bonsynth.cli.rm import PREFIX_SHARING
from bonsynth.settings import PREFIX_SHARING_HELP, UNSAFE_WEIGHTS_HELP


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--judge", "judges", required=True, multiple=True,
              help="Judge: a reward model directory (not the RM that selected; repeat for several), or "
                   "openai:MODEL for an LLM judge on an OpenAI-compatible server.")
@click.option("--judge-weights", default=None,
              help="Comma-separated weights for several judges, z-normalised as generate's --reward-weights.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Report directory (default: RUN_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Print judge.json instead of the summary.")
@click.option("--bootstrap", type=int, default=2000, show_default=True, help="Bootstrap resamples for the win-rate CI.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True, help="auto = bf16 on GPU, fp32 on CPU.")
@click.option("--prefix-sharing", type=PREFIX_SHARING, default="auto", show_default=True, help=PREFIX_SHARING_HELP)
@click.option("--trust-remote-code/--no-trust-remote-code", default=False, show_default=True,
              help="Run Python code shipped in the judge model directories.")
@click.option("--allow-unsafe-weights", is_flag=True, help=UNSAFE_WEIGHTS_HELP)
@click.option("--judge-mode", type=click.Choice(["pointwise", "pairwise"]), default="pointwise", show_default=True,
              help="openai judge: score each candidate (1-10), or compare the proxy's pick with each other candidate.")
@click.option("--judge-prompt", default=None, type=click.Path(dir_okay=False),
              help="openai judge: prompt template file ({prompt} and {response}, or {response_a} and {response_b} "
                   "for pairwise); default: the one shipped with bonsynth.")
@click.option("--base-url", default=None,
              help="openai judge: server (default: $BONSYNTH_OPENAI_BASE_URL or $OPENAI_BASE_URL); key from $OPENAI_API_KEY.")
@click.option("--concurrency", type=int, default=8, show_default=True, help="openai judge: requests in flight.")
@click.option("--judge-max-tokens", type=int, default=16, show_default=True, help="openai judge: tokens per answer.")
def judge(run_dir: Path, judges, judge_weights, out, as_json: bool, bootstrap: int, seed: int, device: str,
          dtype: str, prefix_sharing: str, trust_remote_code: bool, allow_unsafe_weights: bool, judge_mode: str,
          judge_prompt, base_url, concurrency: int, judge_max_tokens: int) -> None:
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
    from bonsynth.judge.run import JudgeConfig, judge_run

    cfg = JudgeConfig(run_dir=str(run_dir), judges=list(judges), judge_weights=parse_weights(judge_weights, "--judge-weights"),
                      out=str(out) if out is not None else None, device=device, dtype=dtype,
                      prefix_sharing=prefix_sharing, trust_remote_code=trust_remote_code,
                      allow_unsafe_weights=allow_unsafe_weights, bootstrap=bootstrap, seed=seed,
                      judge_mode=judge_mode, judge_prompt=judge_prompt, base_url=base_url, concurrency=concurrency,
                      judge_max_tokens=judge_max_tokens)
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
