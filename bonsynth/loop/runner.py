"""`run_loop`: rounds of best-of-N -> policy update -> eval, durable and resumable.

Layout of the loop directory (nothing in it is ever overwritten with different content):

    recipe.yaml                  the validated recipe the loop runs
    loop_state.json              the stages completed so far (what --resume continues from)
    eval_prompts.jsonl           the fixed eval prompts
    baseline/eval/, metrics.json the starting policy on the eval prompts
    round_000/
      prompts.jsonl              this round's prompts
      generate/                  best-of-N: candidates.jsonl, sft.jsonl, dpo.jsonl, manifest.json
      policy/                    the updated policy (safetensors + tokenizer) = the next round's policy
      train.json                 what the update trained on, and its loss
      rm_pairs.jsonl, rm/        with rm_update: the relabelled pairs and the fine-tuned RM
      eval/                      the updated policy's samples on the eval prompts (with eval.judge also
                                 judge.json and gold.jsonl: the judge's scores, see bonsynth.loop.gold)
      control/                   with control: random: sft.jsonl or dpo.jsonl (random candidates), policy/,
                                 train.json, eval/, metrics.json (the control arm)
      metrics.json, report.md, reward_distribution.png, reward_vs_round.png
    loop_summary.json, report.md, *.png    the whole loop so far

Stages run in order: baseline, then per round generate, train, [rm_update], [control_train, control_eval],
eval (control first, so the round's eval can compare the arms and write the report). Each is recorded in
loop_state.json when complete; `--resume` skips recorded stages, generation continues from its last durable
batch (run_generate's own resume), and an interrupted update trains again from the same inputs and seed, which
reproduces it (training is seeded and, on the CPU, deterministic). Every seed derives from the recipe seed
and the round index, so a loop is reproducible from its recipe.

With the vLLM backend, each generation runs in a child process (`python -m bonsynth.generate.worker`, given
the generation's config on stdin, resuming), so the engine's GPU memory is returned to the driver before
training starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml

from bonsynth.errors import BonsynthError, ConfigError
from bonsynth.generate.outputs import write_json_atomic
from bonsynth.generate.pipeline import GenerateConfig
from bonsynth.locks import LOCK_FILE, dir_lock
from bonsynth.loop import gold as gold_mod
from bonsynth.loop.recipe import (
    FILTER_KEYS,
    SYNTH_BATCH_KEYS,
    SYNTH_KEYS,
    VLLM_ONLY,
    LoopRecipe,
    fingerprint_view,
    load_recipe,
)
from bonsynth.loop.report import RoundView, write_report
from bonsynth.loop.sources import ResolvedSources, derive_seed, resolve_sources, round_prompts, write_prompts

STATE_FILE = "loop_state.json"
SUMMARY_FILE = "loop_summary.json"
RECIPE_COPY = "recipe.yaml"
STATE_VERSION = 1

# Runs before `python -m bonsynth.generate.worker`: the child dies with the loop process (Linux), so a killed
# loop never leaves a generator writing into a directory that a resumed loop is about to continue.
_LAUNCHER = """\
import ctypes, os, signal, sys
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass
if os.getppid() != parent:
    sys.exit(1)
os.execv(sys.executable, [sys.executable, "-m", "bonsynth.generate.worker"])
"""


def round_name(r: int) -> str:
    return f"round_{r:03d}"


def _say(msg: str) -> None:
    click.echo(msg, err=True)


def _text_of(prompt) -> str:
    """A prompt's text for copy checks: the last user turn of a chat prompt."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def run_generate_subprocess(cfg: GenerateConfig) -> None:
    """Run one generation in a child process; its memory (a vLLM engine's GPU memory) goes when it exits.

    The child (`bonsynth.generate.worker`) reads the config itself on stdin, so it runs exactly `cfg`."""
    cmd = [sys.executable, "-c", _LAUNCHER, str(os.getpid())]
    stdout = sys.stderr if _has_fileno(sys.stderr) else None  # the child's summary table is progress, not output
    payload = json.dumps({"generate_config": cfg.to_dict()})
    proc = subprocess.run(cmd, input=payload, text=True, stdout=stdout, check=False)
    if proc.returncode == 2:
        raise BonsynthError(f"generation into {cfg.out} failed (see the error above)")
    if proc.returncode != 0:
        raise RuntimeError(f"generation subprocess for {cfg.out} exited with status {proc.returncode}")


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


class LoopRunner:
    """One loop directory, driven stage by stage from a validated recipe."""

    def __init__(self, recipe: LoopRecipe, sources: ResolvedSources, out: Path, *, recipe_path: str = "recipe",
                 show_progress: bool = True, judge: list[str] | None = None) -> None:
        self.recipe = recipe
        self.src = sources
        self.judge = judge  # resolved eval.judge paths, or None
        self._judge_warnings: list[str] | None = None
        self.out = out.resolve()
        self.recipe_path = recipe_path
        self.show_progress = show_progress
        self.state: dict = {}
        stages = ["generate", "train"] + (["rm_update"] if recipe.rm_update else [])
        if recipe.control:
            stages += ["control_train", "control_eval"]
        self.stages = stages + ["eval"]

    # ------------------------------------------------------------------------------------------ state

    def open(self, resume: bool, *, rounds_given: bool = False) -> None:
        """Start a new loop directory, or check that the one there is this recipe's before continuing it.

        A resumed loop that was extended with --rounds keeps its longer plan unless --rounds is given again.
        """
        state_path = self.out / STATE_FILE
        fp = self.recipe.fingerprint()
        if state_path.exists():
            state = _read_json(state_path)
            if not resume:
                raise ConfigError(f"{self.out} already holds a loop; pass --resume to continue it, or choose another out")
            if state.get("recipe_fingerprint") != fp:
                old = state.get("recipe", {})
                new = fingerprint_view(self.recipe)
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ConfigError(f"--resume with a different recipe than the loop in {self.out} "
                                  f"(differs in: {', '.join(diff) or '?'})")
            self.state = state
            planned = int(state.get("rounds_planned", 0))
            if not rounds_given and planned > self.recipe.rounds:
                self.recipe.rounds = planned
            return
        if self.out.exists() and any(p.name != LOCK_FILE for p in self.out.iterdir()):
            raise ConfigError(f"{self.out} exists and is not empty; choose another out")
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = {"bonsynth_loop": STATE_VERSION, "recipe_fingerprint": fp, "recipe": fingerprint_view(self.recipe),
                      "done": [], "stage": None, "timings_s": {}}
        dump = self.recipe.model_dump(mode="json")
        (self.out / RECIPE_COPY).write_text(
            f"# the recipe of this loop, as validated (from {self.recipe_path})\n"
            + yaml.safe_dump(dump, sort_keys=False), encoding="utf-8")
        self._save_state()

    def _save_state(self) -> None:
        self.state["rounds_planned"] = self.recipe.rounds
        write_json_atomic(self.out / STATE_FILE, self.state)

    def _mark(self, step: str, seconds: float) -> None:
        if step not in self.state["done"]:
            self.state["done"].append(step)
        self.state["stage"] = step
        self.state["timings_s"][step] = round(seconds, 2)
        self._save_state()

    def locked(self) -> contextlib.AbstractContextManager:
        """One loop process per directory at a time (the lock goes with the process, even on SIGKILL)."""
        self.out.mkdir(parents=True, exist_ok=True)
        return dir_lock(self.out, what="bonsynth loop")

    # ------------------------------------------------------------------------------------------ paths

    def rdir(self, r: int) -> Path:
        return self.out / round_name(r)

    def policy_for(self, r: int) -> str:
        """The policy round r starts from: the checkpoint of the last round that trained one."""
        for prev in range(r - 1, -1, -1):
            if (self.rdir(prev) / "policy").exists():
                return str(self.rdir(prev) / "policy")
        return self.src.policy

    def rewards_for(self, r: int) -> list[str]:
        """The RM(s) that score round r's candidates: the last updated RM with rm_update, else the recipe's."""
        if self.recipe.rm_update:
            for prev in range(r - 1, -1, -1):
                if (self.rdir(prev) / "rm").exists():
                    return [str(self.rdir(prev) / "rm")]
        return list(self.src.rewards)

    def rel(self, path: str | Path) -> str:
        """A path inside the loop directory relative to it (so records do not depend on where the loop lives)."""
        p = Path(path)
        try:
            return str(p.relative_to(self.out))
        except ValueError:
            return str(p)

    def eval_dir(self, r: int | None, arm: str = "main") -> Path:
        if r is None:
            return self.out / "baseline" / "eval"  # both arms start from the same policy
        return self.rdir(r) / ("eval" if arm == "main" else "control/eval")

    def control_policy_for(self, r: int) -> str:
        """The policy the control arm's round r trains from: its own last checkpoint, else the base policy."""
        for prev in range(r - 1, -1, -1):
            if (self.rdir(prev) / "control" / "policy").exists():
                return str(self.rdir(prev) / "control" / "policy")
        return self.src.policy

    # ------------------------------------------------------------------------------------------ generation

    def _gen_config(self, *, policy: str, rewards: list[str], weights, prompts: Path, out: Path, n: int,
                    temperature: float, top_p: float, max_new_tokens: int, seed: int, select: str,
                    min_reward=None, min_margin=None, dedup=False, length_normalize=False,
                    write_pairs: bool = False, prune: bool = False) -> GenerateConfig:
        """One generation's config; `prune`: the round's best-of-N uses the recipe's prune schedule (the eval
        samples never do: they measure the policy's own replies)."""
        g = self.recipe.generation
        opts = {k: v for k, v in (("batch_size", g.gen_batch_size), ("tensor_parallel_size", g.tensor_parallel_size),
                                  ("gpu_memory_utilization", g.gpu_memory_utilization)) if v is not None}
        settings = g.generate_settings()  # the section's own GenerateConfig fields, then this generation's
        settings.update(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                        prune_at=settings["prune_at"] if prune else None,
                        prune_keep=settings["prune_keep"] if prune else None)
        return GenerateConfig(
            policy=policy, rewards=list(rewards), reward_weights=list(weights) if weights is not None else None,
            prompts=str(prompts), out=str(out), seed=seed, select=select, write_pairs=write_pairs,
            min_reward=min_reward, min_margin=min_margin, dedup=dedup, length_normalize=length_normalize, resume=True,
            device=self.recipe.device, dtype=self.recipe.dtype, backend_options=opts, show_progress=self.show_progress,
            **settings, **self._load_options(),
        )

    def _load_options(self) -> dict[str, bool]:
        """The recipe's model-loading switches, for every policy and RM load of the loop."""
        return {"trust_remote_code": self.recipe.trust_remote_code,
                "allow_unsafe_weights": self.recipe.allow_unsafe_weights}

    def _use_subprocess(self) -> bool:
        g = self.recipe.generation
        if g.subprocess is not None:
            return g.subprocess
        from bonsynth.generate.backends import resolve_backend_name

        return resolve_backend_name(g.backend) == "vllm"

    def _generate(self, cfg: GenerateConfig) -> dict:
        if self._use_subprocess():
            run_generate_subprocess(cfg)
        else:
            from bonsynth.generate.pipeline import run_generate

            run_generate(cfg)
            from bonsynth.loop.train_policy import free_memory

            free_memory()
        return _read_json(Path(cfg.out) / "manifest.json")

    def _eval_config(self, policy: str, out: Path) -> GenerateConfig:
        g, ev = self.recipe.generation, self.recipe.eval
        weights = ev.reward_weights if ev.rewards else self.recipe.reward_weights
        return self._gen_config(
            policy=policy, rewards=self.src.eval_rewards, weights=weights, prompts=self.out / "eval_prompts.jsonl",
            out=out, n=ev.n, temperature=ev.temperature if ev.temperature is not None else g.temperature,
            top_p=ev.top_p if ev.top_p is not None else g.top_p,
            max_new_tokens=ev.max_new_tokens if ev.max_new_tokens is not None else g.max_new_tokens,
            seed=derive_seed(self.recipe.seed, "eval"), select="best",
        )

    # ------------------------------------------------------------------------------------------ stages

    def stage_baseline(self) -> None:
        out = self.eval_dir(None)
        out.parent.mkdir(parents=True, exist_ok=True)
        self._generate(self._eval_config(self.src.policy, out))
        self._judge(out)
        self._write_metrics(None)

    def stage_generate(self, r: int) -> None:
        rd = self.rdir(r)
        rd.mkdir(parents=True, exist_ok=True)
        if not (rd / "prompts.jsonl").exists():
            write_prompts(rd / "prompts.jsonl", self._round_prompts(r))
        s, g = self.recipe.selection, self.recipe.generation
        cfg = self._gen_config(
            policy=self.policy_for(r), rewards=self.rewards_for(r),
            weights=None if self.recipe.rm_update else self.recipe.reward_weights, prompts=rd / "prompts.jsonl",
            out=rd / "generate", n=g.n, temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens,
            seed=derive_seed(self.recipe.seed, "round", r, "generate"), select=s.select, min_reward=s.min_reward,
            min_margin=s.min_margin, dedup=s.dedup, length_normalize=s.length_normalize,
            write_pairs=self._needs_pairs(), prune=True,
        )
        self._generate(cfg)

    def _round_prompts(self, r: int) -> list:
        """Round r's prompts: its slice of the file prompts, then (with a `synth` item) its synthetic ones."""
        pool = self.src.pool
        prompts = round_prompts(pool, self.recipe.prompts_per_round, self.recipe.seed, r) if pool else []
        if self.recipe.prompt_synth is not None:
            prompts += self._synthesise(r)
        return prompts

    def _synthesise(self, r: int) -> list:
        """`per_round` fresh prompts by the round's policy (or the fixed model), resumable inside the round;
        a synthetic prompt that copies an eval prompt is dropped (the eval set stays held out)."""
        from bonsynth.data.readers import load_prompts
        from bonsynth.data.synth import FilterSettings, copy_key
        from bonsynth.generate.synth import SynthConfig, output_paths, run_synth

        syn, g = self.recipe.prompt_synth, self.recipe.generation
        out = self.rdir(r) / "synth" / "prompts.jsonl"
        _, manifest_path, partial = output_paths(out)
        section = syn.model_dump()
        own = {k: section[k] for k in SYNTH_KEYS + SYNTH_BATCH_KEYS if k != "seeds"}
        cfg = SynthConfig(
            seeds=self.src.synth_seeds, policy=self.src.synth_model or self.policy_for(r), num=syn.per_round,
            out=str(out), backend=g.backend, seed=derive_seed(self.recipe.seed, "round", r, "synth"),
            filters=FilterSettings(**{k: section[k] for k in FILTER_KEYS}), **own,
            resume=partial.exists() or out.exists(), device=self.recipe.device, dtype=self.recipe.dtype,
            show_progress=self.show_progress, **self._load_options(),
        )
        run_synth(cfg)
        held = {copy_key(_text_of(p.prompt)) for p in self.src.eval_prompts}
        made = load_prompts(str(out))
        kept = [p for p in made if copy_key(_text_of(p.prompt)) not in held]
        write_json_atomic(self.rdir(r) / "synth" / "summary.json", {
            "model": self.rel(cfg.policy), "made": len(made), "kept": len(kept),
            "dropped_eval_copies": len(made) - len(kept), "manifest": self.rel(manifest_path)})
        return kept

    def _needs_pairs(self) -> bool:
        """best / top-k rounds write DPO pairs too when something reads them: a DPO update, rm_update, or a
        `min_margin` that filters them (`pairs` mode always writes them)."""
        s = self.recipe.selection
        return s.select != "pairs" and (self.recipe.update.method == "dpo" or self.recipe.rm_update is not None
                                        or s.min_margin is not None)

    def stage_train(self, r: int) -> None:
        from bonsynth.loop.train_policy import TRAIN_SUMMARY, train_policy

        rd = self.rdir(r)
        ckpt = rd / "policy"
        summary_in_ckpt = ckpt / TRAIN_SUMMARY
        if ckpt.exists() and summary_in_ckpt.exists():
            summary = _read_json(summary_in_ckpt)  # the update finished; only its record was lost
        else:
            summary = train_policy(
                self.recipe.update.method, rd / "generate", self.policy_for(r), ckpt, self.recipe.update,
                seed=derive_seed(self.recipe.seed, "round", r, "train"), device=self.recipe.device,
                dtype=self.recipe.dtype, show_progress=self.show_progress, **self._load_options(),
            )
        summary.pop("runtime_s", None)
        summary["policy_in"] = self.rel(self.policy_for(r))
        summary["policy_out"] = self.rel(ckpt) if ckpt.exists() else None
        write_json_atomic(rd / "train.json", summary)

    def stage_rm_update(self, r: int) -> None:
        from bonsynth.loop.rm_update import RM_UPDATE_SUMMARY, update_reward_model

        rd = self.rdir(r)
        cfg = self.recipe.rm_update
        assert cfg is not None and self.src.labeler is not None
        rm_in = self.rewards_for(r)[0]
        if (rd / "rm" / RM_UPDATE_SUMMARY).exists():
            summary = _read_json(rd / "rm" / RM_UPDATE_SUMMARY)  # the update finished; only its record was lost
        else:
            summary = update_reward_model(
                rd / "generate", rm_in, self.src.labeler, rd / "rm", cfg,
                seed=derive_seed(self.recipe.seed, "round", r, "rm_update"), device=self.recipe.device,
                dtype=self.recipe.dtype, show_progress=self.show_progress, **self._load_options(),
            )
        summary.pop("runtime_s", None)
        summary["rm_in"] = self.rel(rm_in)
        write_json_atomic(rd / "rm_update.json", summary)

    def stage_control_train(self, r: int) -> None:
        """The control arm's update: the same step, on random candidates of this round, from its own policy."""
        from bonsynth.loop.train_policy import TRAIN_SUMMARY, train_policy

        cd = self.rdir(r) / "control"
        method = self.recipe.update.method
        data = gold_mod.write_control_data(self.rdir(r) / "generate", cd, seed=self.recipe.seed, r=r, method=method)
        ckpt = cd / "policy"
        policy_in = self.control_policy_for(r)
        if ckpt.exists() and (ckpt / TRAIN_SUMMARY).exists():
            summary = _read_json(ckpt / TRAIN_SUMMARY)
        else:
            summary = train_policy(
                method, cd, policy_in, ckpt, self.recipe.update,
                seed=derive_seed(self.recipe.seed, "round", r, "control_train"), device=self.recipe.device,
                dtype=self.recipe.dtype, show_progress=self.show_progress, **self._load_options(),
            )
        summary.pop("runtime_s", None)
        summary["policy_in"] = self.rel(policy_in)
        summary["policy_out"] = self.rel(ckpt) if ckpt.exists() else None
        summary["control"] = {"selection": "random", **data}
        write_json_atomic(cd / "train.json", summary)

    def stage_control_eval(self, r: int) -> None:
        cd = self.rdir(r) / "control"
        policy = str(cd / "policy") if (cd / "policy").exists() else self.control_policy_for(r)
        self._generate(self._eval_config(policy, self.eval_dir(r, "control")))
        self._judge(self.eval_dir(r, "control"))
        self._write_metrics(r, arm="control")

    def stage_eval(self, r: int) -> None:
        policy = str(self.rdir(r) / "policy") if (self.rdir(r) / "policy").exists() else self.policy_for(r)
        self._generate(self._eval_config(policy, self.eval_dir(r)))
        self._judge(self.eval_dir(r))
        self._write_metrics(r)
        history = self.history(upto=r)
        write_report(self.rdir(r), history, title=f"bonsynth loop: {round_name(r)}", notes=self._notes(r),
                     control=self.history(upto=r, arm="control") if self.recipe.control else None,
                     warnings=self.judge_warnings())

    def _judge(self, run_dir: Path) -> None:
        """Re-score an eval run with the gold judge (nothing without eval.judge)."""
        if self.judge:
            gold_mod.judge_eval_run(run_dir, self.judge, self.recipe.eval.judge_weights, self.recipe,
                                    seed=derive_seed(self.recipe.seed, "judge"))
            from bonsynth.loop.train_policy import free_memory

            free_memory()

    def judge_warnings(self) -> list[str]:
        """The judge shares files with an RM of the recipe: say so in every report (checked once: equal-sized
        weights are hashed, which for large models takes a while)."""
        if not self.judge:
            return []
        if self._judge_warnings is None:
            self._judge_warnings = self._find_judge_overlap()
        return list(self._judge_warnings)

    def _find_judge_overlap(self) -> list[str]:
        assert self.judge
        models = {"rewards": list(self.src.rewards), "eval.rewards": list(self.src.eval_rewards)}
        if self.src.labeler:
            models["rm_update.labeler"] = [self.src.labeler]
        if self.recipe.eval.rewards is None:
            models.pop("eval.rewards")  # the same as rewards: said once
        return gold_mod.judge_overlap_warnings(self.judge, models)

    def _write_metrics(self, r: int | None, arm: str = "main") -> dict:
        from bonsynth.loop.metrics import eval_metrics

        prev = None if r is None else self.eval_dir(r - 1 if r > 0 else None, arm)
        here = self.eval_dir(r, arm)
        m = eval_metrics(here / "candidates.jsonl", prev / "candidates.jsonl" if prev else None)
        record: dict = {"round": r, "eval": m} if arm == "main" else {"round": r, "arm": arm, "eval": m}
        if self.judge:
            extra = {}
            if arm == "main" and r is not None and self.recipe.control:
                extra["control"] = self.eval_dir(r, "control")
            record["gold"] = gold_mod.gold_metrics(here, previous=prev, base=None if r is None else self.eval_dir(None),
                                                   seed=derive_seed(self.recipe.seed, "gold-bootstrap"), extra=extra)
            report = _read_json(here / "judge.json")
            record["gold"]["judge"] = {"name": report["judge"]["name"], "judge_is_proxy": report["judge_is_proxy"],
                                       "best_of_n_win_rate_vs_random": report["gold_win_rate_vs_random"],
                                       "rank_agreement": report["rank_agreement"]}
        if arm == "control":
            assert r is not None
            record["train"] = _read_json(self.rdir(r) / "control" / "train.json")
            write_json_atomic(self.rdir(r) / "control" / "metrics.json", record)
            return record
        if r is not None:
            rd = self.rdir(r)
            man = _read_json(rd / "generate" / "manifest.json")
            record["generate"] = {**man["counts"], **man["summary"]}
            record["generate"].pop("finish_reasons", None)
            record["generate"].pop("pairs_skipped", None)
            record["train"] = _read_json(rd / "train.json")
            if (rd / "rm_update.json").exists():
                record["rm_update"] = _read_json(rd / "rm_update.json")
        path = (self.out / "baseline" if r is None else self.rdir(r)) / "metrics.json"
        write_json_atomic(path, record)
        return record

    # ------------------------------------------------------------------------------------------ reports

    def _notes(self, upto: int | None) -> list[str]:
        rc = self.recipe
        n_done = 0 if upto is None else upto + 1
        return [
            f"- recipe: `{self.recipe_path}`" + (f" ({rc.name})" if rc.name else ""),
            f"- update: {rc.update.method}{' + LoRA' if rc.update.lora else ''}"
            + (" with rm_update" if rc.rm_update else "") + f"; N = {rc.generation.n}, selection {rc.selection.select}",
            f"- rounds complete: {n_done} of {rc.rounds}; eval: {len(self.src.eval_prompts)} prompts x "
            f"{rc.eval.n} samples",
        ] + ([f"- gold judge: {', '.join(f'`{j}`' for j in self.judge)}"] if self.judge else []) + (
            [f"- control arm: {rc.control} candidates, same update, its own policy chain"] if rc.control else [])

    def history(self, upto: int | None, arm: str = "main") -> list[RoundView]:
        """The baseline and each finished round of one arm (the control arm shares the baseline)."""
        from bonsynth.loop.metrics import eval_rewards

        views = []
        for r in [None, *range(0 if upto is None else upto + 1)]:
            base = self.out / "baseline" if r is None else self.rdir(r) if arm == "main" else self.rdir(r) / "control"
            mpath = base / "metrics.json"
            if not mpath.exists():
                continue
            rec = _read_json(mpath)
            views.append(RoundView(
                label="base" if r is None else f"round {r}", round=r, metrics=rec["eval"],
                rewards=eval_rewards(self.eval_dir(r, arm) / "candidates.jsonl"), train=rec.get("train", {}),
                generate=rec.get("generate", {}), rm_update=rec.get("rm_update", {}), gold=rec.get("gold", {}),
            ))
        return views

    def rounds_complete(self) -> int:
        done = set(self.state.get("done", []))
        n = 0
        while n < self.recipe.rounds and f"{round_name(n)}/eval" in done:
            n += 1
        return n

    def write_summary(self) -> dict:
        n = self.rounds_complete()
        history = self.history(upto=n - 1 if n else None)
        rounds = [_read_json(self.rdir(r) / "metrics.json") for r in range(n)]
        base = _read_json(self.out / "baseline" / "metrics.json") if (self.out / "baseline" / "metrics.json").exists() else None
        summary = {
            "bonsynth_loop": STATE_VERSION,
            "name": self.recipe.name,
            "out": str(self.out),
            "rounds_planned": self.recipe.rounds,
            "rounds_complete": n,
            "update": self.recipe.update.method,
            "baseline": base,
            "rounds": rounds,
            "reward_mean_by_round": [h.metrics["reward_mean"] for h in history],
            "final_policy": self.policy_for(n) if n else None,
        }
        if self.judge:
            summary["gold_mean_by_round"] = [h.gold.get("gold_mean") for h in history]
            summary["judge"] = list(self.judge)
            summary["judge_warnings"] = self.judge_warnings()
        if self.recipe.control:
            control = self.history(upto=n - 1 if n else None, arm="control")
            summary["control"] = {
                "selection": self.recipe.control,
                "rounds": [_read_json(self.rdir(r) / "control" / "metrics.json") for r in range(n)],
                "reward_mean_by_round": [h.metrics["reward_mean"] for h in control],
                "final_policy": self.control_policy_for(n) if n else None,
            }
            if self.judge:
                summary["control"]["gold_mean_by_round"] = [h.gold.get("gold_mean") for h in control]
        write_json_atomic(self.out / SUMMARY_FILE, summary)
        if history:
            write_report(self.out, history, title=f"bonsynth loop{': ' + self.recipe.name if self.recipe.name else ''}",
                         notes=self._notes(n - 1 if n else None),
                         control=self.history(upto=n - 1 if n else None, arm="control") if self.recipe.control else None,
                         warnings=self.judge_warnings())
        return summary

    # ------------------------------------------------------------------------------------------ driver

    def steps(self) -> list[tuple[str, int | None, str]]:
        out: list[tuple[str, int | None, str]] = [("baseline", None, "baseline")]
        for r in range(self.recipe.rounds):
            out.extend((f"{round_name(r)}/{s}", r, s) for s in self.stages)
        return out

    def run(self) -> dict:
        write_prompts(self.out / "eval_prompts.jsonl", self.src.eval_prompts)
        done = set(self.state.get("done", []))
        steps = self.steps()
        todo = [s for s in steps if s[0] not in done]
        if done and todo:
            _say(f"resuming {self.out} at {todo[0][0]}")
        for w in self.judge_warnings():
            _say(f"warning: {w}")
        for name, r, stage in todo:
            label = "baseline eval" if r is None else f"round {r} ({r + 1} of {self.recipe.rounds}) {stage}"
            _say(f"[loop] {label} ...")
            t0 = time.perf_counter()
            if stage == "baseline":
                self.stage_baseline()
            else:
                getattr(self, f"stage_{stage}")(r)
            seconds = time.perf_counter() - t0
            self._mark(name, seconds)
            if stage == "eval":
                m = _read_json(self.rdir(r) / "metrics.json")["eval"]
                wr = m.get("win_rate_vs_previous")
                _say(f"[loop] round {r}: eval reward mean {m['reward_mean']:+.4f}, median {m['reward_median']:+.4f}, "
                     f"p90 {m['reward_p90']:+.4f}, win rate vs previous {'-' if wr is None else f'{wr:.3f}'}")
                gm = _read_json(self.rdir(r) / "metrics.json").get("gold")
                if gm:
                    wb = gm.get("gold_win_rate_vs_base")
                    _say(f"[loop] round {r}: gold mean {gm['gold_mean']:+.4f}, gold win rate vs base "
                         f"{'-' if wb is None else f'{wb:.3f}'}")
                self.write_summary()
        return self.write_summary()


def check_vllm_options(recipe: LoopRecipe, source: str) -> None:
    """vLLM-only generation keys with `backend: auto` that resolves to hf here: an error before anything is
    written, not a failure at the first generation (an explicit `backend: hf` is refused by the recipe itself)."""
    from bonsynth.generate.backends import resolve_backend_name

    g = recipe.generation
    given = [f"generation.{k}" for k in VLLM_ONLY if getattr(g, k)]
    if given and (name := resolve_backend_name(g.backend)) != "vllm":
        raise ConfigError(f"{source}: {' and '.join(given)} only apply to the vllm backend "
                          f"(backend {g.backend} is {name} here)")


def run_loop(recipe_path: str | Path, resume: bool = False, rounds: int | None = None, *, out: str | Path | None = None,
             show_progress: bool = True) -> dict:
    """Run (or with `resume`, continue) the loop a recipe describes; returns the loop summary.

    `rounds` overrides the recipe's number of rounds (a resumed loop may be extended this way); `out` its
    loop directory.
    """
    recipe = load_recipe(recipe_path)
    if rounds is not None:
        if rounds < 1:
            raise ConfigError(f"--rounds must be at least 1, got {rounds}")
        recipe.rounds = rounds
    if out is not None:
        recipe.out = str(out)
    sources = resolve_sources(recipe, str(recipe_path))  # every path is checked before anything is written
    judge = gold_mod.resolve_judge(recipe, str(recipe_path))
    check_vllm_options(recipe, str(recipe_path))
    runner = LoopRunner(recipe, sources, Path(recipe.out), recipe_path=str(recipe_path), show_progress=show_progress,
                        judge=judge)
    with runner.locked():
        runner.open(resume, rounds_given=rounds is not None)
        return runner.run()
