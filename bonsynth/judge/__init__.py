"""Gold-judge evaluation of a best-of-N run: does selecting with the proxy RM help under another judge?

Imports data, rm, generate and select; only the CLI (and later the loop) import it.
"""

from bonsynth.judge.run import JudgeConfig, judge_run

__all__ = ["JudgeConfig", "judge_run"]
