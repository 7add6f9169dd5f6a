"""`python -m bonsynth.generate.worker`: one generation run from a `GenerateConfig` read on stdin.

The loop runs a vLLM generation in a child process, so the engine's GPU memory is returned before training
starts. The child gets the config itself (`GenerateConfig.to_dict()` as JSON on stdin), not a command line
rebuilt from it: there is no round trip through flags to keep in step, and a base URL with credentials in
`backend_options` appears in no argv and no file. It writes the summary table on stdout and fails like the CLI:
one `error:` line and exit code 2 for a user error.
"""

from __future__ import annotations

import json
import os
import sys

from bonsynth.errors import ConfigError, user_error_line


def read_config(text: str):
    from bonsynth.generate.pipeline import GenerateConfig

    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"generation worker: stdin is not a JSON config ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("generate_config"), dict):
        raise ConfigError("generation worker: stdin must be {\"generate_config\": {...}}")
    return GenerateConfig.from_dict(data["generate_config"])


def run(text: str) -> None:
    from bonsynth.generate.pipeline import run_generate
    from bonsynth.generate.report import summary_table

    cfg = read_config(text)
    if not cfg.show_progress:  # transformers' own "Loading weights" bars too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    manifest = run_generate(cfg)
    print(summary_table(manifest, cfg.out), flush=True)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run(sys.stdin.read())
    except Exception as e:  # noqa: BLE001 (a user error is one line; anything else keeps its traceback)
        line = user_error_line(e)
        if line is None:
            raise
        print(line[0], file=sys.stderr, flush=True)
        sys.exit(line[1])
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
