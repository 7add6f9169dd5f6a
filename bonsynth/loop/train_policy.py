"""A round's policy update: TRL's SFTTrainer on the best-of-N (RAFT / ReST) or DPOTrainer on the pairs.

Training must see the text the policy generated from. Generation renders a prompt with
`bonsynth.data.chat.render_prompt` using the policy's tokenizer: the chat template when there is one, else
bonsynth's plain fallback. So rows are handed to TRL in the matching form: conversational (TRL applies the
same chat template) when the tokenizer has a template, else prompt/completion strings rendered with
`render_prompt` / `render_response` (the same strings generation and the RM saw).

The result is always a plain model (a LoRA adapter is merged) saved with safetensors, plus its tokenizer, so
the next round's generator (hf or vLLM) loads it like any checkpoint. It is built in a hidden directory and
moved into place when complete, so a killed round never leaves a half-written checkpoint under its name.
"""

from __future__ import annotations

import contextlib
import gc
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from bonsynth.data.chat import has_chat_template, render_prompt, render_response
from bonsynth.errors import ConfigError
from bonsynth.loop.recipe import LoraSection, UpdateSection
from bonsynth.models import checkpointing_args
from bonsynth.outdir import build_dir_atomic

TRAIN_SUMMARY = "bonsynth_train.json"


def to_trl_row(prompt: Any, completions: dict[str, str], tokenizer: Any) -> dict:
    """One example in the form TRL tokenizes exactly as generation rendered it.

    `completions` maps TRL's field names (`completion`, or `chosen` and `rejected`) to reply texts.
    """
    if isinstance(prompt, list) and has_chat_template(tokenizer):
        row: dict = {"prompt": [dict(m) for m in prompt]}
        for key, text in completions.items():
            row[key] = [{"role": "assistant", "content": text}]
        return row
    row = {"prompt": render_prompt(prompt, tokenizer)}
    for key, text in completions.items():
        row[key] = render_response(prompt, text, tokenizer)
    return row


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _reply(value: Any) -> str:
    return value[-1]["content"] if isinstance(value, list) else value


def sft_rows(gen_dir: Path, tokenizer: Any) -> list[dict]:
    """The round's best-of-N (sft.jsonl) as TRL prompt/completion rows."""
    rows = []
    for r in _read_jsonl(gen_dir / "sft.jsonl"):
        if "messages" in r:
            prompt, text = r["messages"][:-1], r["messages"][-1]["content"]
        else:
            prompt, text = r["prompt"], r["completion"]
        rows.append(to_trl_row(prompt, {"completion": text}, tokenizer))
    return rows


def dpo_rows(gen_dir: Path, tokenizer: Any) -> list[dict]:
    """The round's pairs (dpo.jsonl) as TRL prompt/chosen/rejected rows."""
    return [
        to_trl_row(r["prompt"], {"chosen": _reply(r["chosen"]), "rejected": _reply(r["rejected"])}, tokenizer)
        for r in _read_jsonl(gen_dir / "dpo.jsonl")
    ]


def _precision(dtype: str, device: str) -> tuple[Any, dict]:
    """Load dtype and Trainer precision flags: bf16 weights and autocast on a bf16 GPU, fp32 on the CPU."""
    import torch

    from bonsynth.models import resolve_dtype

    dt = resolve_dtype(dtype, device)
    if not device.startswith("cuda") or dt == torch.float32:
        return torch.float32, {"bf16": False, "fp16": False}
    if dt == torch.bfloat16:
        return torch.bfloat16, {"bf16": True, "fp16": False}
    return torch.float32, {"bf16": False, "fp16": True}  # fp16: fp32 master weights, fp16 autocast


def _peft_config(lora: LoraSection | None) -> Any:
    if lora is None:
        return None
    try:
        from peft import LoraConfig
    except ImportError:
        raise ConfigError("update.lora needs the peft package: pip install 'bonsynth[lora]'") from None
    return LoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha or 2 * lora.r,
                      lora_dropout=lora.dropout, target_modules=lora.target_modules)


def _common_args(update: UpdateSection, out: Path, seed: int, device: str, precision: dict,
                 show_progress: bool) -> dict:
    import torch

    cuda = device.startswith("cuda")
    return {
        "output_dir": str(out),
        "num_train_epochs": update.epochs,
        "learning_rate": update.learning_rate,
        "per_device_train_batch_size": update.batch_size,
        "gradient_accumulation_steps": update.grad_accum,
        "lr_scheduler_type": update.lr_scheduler,
        "warmup_steps": update.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        "weight_decay": update.weight_decay,
        "seed": seed,
        "data_seed": seed,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        **checkpointing_args(update.gradient_checkpointing),
        "disable_tqdm": not show_progress,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": cuda and torch.cuda.is_available(),
        "use_cpu": not cuda,
        "max_length": update.max_length,
        **precision,
    }


def train_policy(
    method: str,
    gen_dir: str | Path,
    policy_in: str,
    out_dir: str | Path,
    update: UpdateSection,
    *,
    seed: int,
    device: str = "auto",
    dtype: str = "auto",
    show_progress: bool = True,
    trust_remote_code: bool = False,
    allow_unsafe_weights: bool = False,
) -> dict:
    """Train the round's update from `policy_in` on the data in `gen_dir`; save the result to `out_dir`.

    Returns a summary of what was trained (deterministic fields only, so a resumed loop reproduces it). With
    no examples (nothing selected, no pairs) nothing is trained and `skipped` says why. `allow_unsafe_weights`
    lets a recipe's pickle-only policy be trained from (the checkpoint written is safetensors either way).
    """
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from bonsynth.models import load_tokenizer, resolve_device

    if method not in ("sft", "dpo"):
        raise ConfigError(f"unknown update step {method!r}; expected sft or dpo")
    gen_dir, out_dir = Path(gen_dir), Path(out_dir)
    device = resolve_device(device)
    tokenizer = load_tokenizer(policy_in, padding_side="right", trust_remote_code=trust_remote_code)
    rows = sft_rows(gen_dir, tokenizer) if method == "sft" else dpo_rows(gen_dir, tokenizer)
    summary: dict[str, Any] = {"method": method, "num_examples": len(rows), "lora": update.lora is not None}
    if not rows:
        summary["skipped"] = "no SFT rows were selected" if method == "sft" else "no DPO pairs were formed"
        return summary

    # Built aside and renamed into place: a killed round leaves no half-written checkpoint under its name (a
    # checkpoint there without its record is replaced; the runner reuses one only with its record).
    with build_dir_atomic(out_dir, overwrite=True, what="policy checkpoint") as partial:
        transformers.set_seed(seed)
        load_dtype, precision = _precision(dtype, device)
        model = AutoModelForCausalLM.from_pretrained(policy_in, dtype=load_dtype, trust_remote_code=trust_remote_code,
                                                     use_safetensors=None if allow_unsafe_weights else True)
        dataset = Dataset.from_list(rows)
        args = _common_args(update, partial / "_trainer", seed, device, precision, show_progress)
        peft_config = _peft_config(update.lora)

        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings(), _datasets_bars(show_progress):
            warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")  # GPT-2 Conv1D under peft
            if method == "sft":
                from trl import SFTConfig, SFTTrainer

                trainer = SFTTrainer(model=model, args=SFTConfig(**args), train_dataset=dataset,
                                     processing_class=tokenizer, peft_config=peft_config)
            else:
                from trl import DPOConfig, DPOTrainer

                cfg = DPOConfig(**args, beta=update.beta, loss_type=[update.loss_type])
                trainer = DPOTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer,
                                     peft_config=peft_config)
            if not show_progress:
                from transformers.trainer_callback import PrinterCallback

                trainer.remove_callback(PrinterCallback)  # the per-step log dicts
            result = trainer.train()

        losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
        summary.update({
            "train_loss": float(result.training_loss),
            "steps": int(trainer.state.global_step),
            "epochs": update.epochs,
            "learning_rate": update.learning_rate,
            "loss_first": losses[0][1] if losses else None,
            "loss_last": losses[-1][1] if losses else None,
            "runtime_s": round(float(result.metrics.get("train_runtime", 0.0)), 2),
        })
        trained = trainer.model
        if update.lora is not None:
            trained = trained.merge_and_unload()
        trained.config.use_cache = True
        shutil.rmtree(partial / "_trainer", ignore_errors=True)
        trained.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        # The summary travels inside the checkpoint: once the directory is in place, so is its record.
        (partial / TRAIN_SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    del trainer, trained, model
    free_memory()
    return summary


@contextlib.contextmanager
def _datasets_bars(show: bool):
    """Hide datasets' map/filter progress bars while TRL prepares the data, when progress is off."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    if not show:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled and not show:
            datasets.enable_progress_bars()


def free_memory() -> None:
    """Give back what the last stage held (so a GPU is free for the next one)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
