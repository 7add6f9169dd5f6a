"""Optional `rm_update`: fine-tune the round's RM on the round's pairs, ordered by a labelling RM.

The pairs are the round's best-vs-worst candidates (dpo.jsonl, chosen by the current RM). A separate
labelling RM (a stronger or "gold" model) re-judges each pair; ties are dropped, the rest are written as a
pairwise dataset (`rm_pairs.jsonl`, TRL format) and the current RM is trained on them with `bonsynth rm
train`'s code (Bradley–Terry). Training the RM on its own choices would only confirm them, so an update
without a labeller is refused at recipe validation.

The new RM scores (and selects) the next round's candidates. The eval yardstick stays the recipe's initial RMs
(or `eval.rewards`), so eval rewards remain comparable across rounds.
"""

from __future__ import annotations

import json
from pathlib import Path

from bonsynth.loop.recipe import RMUpdateSection
from bonsynth.outdir import build_dir_atomic

RM_UPDATE_SUMMARY = "bonsynth_rm_update.json"


def _reply(value) -> str:
    return value[-1]["content"] if isinstance(value, list) else value


def _as_reply(prompt, text: str):
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def relabel_pairs(dpo_path: Path, labeler: str, out_path: Path, *, device: str = "auto", dtype: str = "auto",
                  trust_remote_code: bool = False, allow_unsafe_weights: bool = False) -> dict:
    """Order each pair by the labeller and write the pairwise dataset; returns counts and the agreement rate."""
    from bonsynth.generate.outputs import row_bytes
    from bonsynth.rm.model import RewardModel

    with open(dpo_path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    stats = {"num_candidate_pairs": len(rows), "num_pairs": 0, "labeler_ties": 0, "empty_replies": 0,
             "agreement": None}
    kept = [r for r in rows if _reply(r["chosen"]).strip() and _reply(r["rejected"]).strip()]
    stats["empty_replies"] = len(rows) - len(kept)  # an RM dataset holds no empty replies
    rows = kept
    if not rows:
        return stats
    rm = RewardModel.load(labeler, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                          allow_unsafe_weights=allow_unsafe_weights)
    items = [(r["prompt"], _reply(r[key])) for r in rows for key in ("chosen", "rejected")]
    scores = rm.score(items)
    out_rows, agree = [], 0
    for i, r in enumerate(rows):
        sc, sr = scores[2 * i], scores[2 * i + 1]
        if sc == sr:
            stats["labeler_ties"] += 1
            continue
        chosen, rejected = (_reply(r["chosen"]), _reply(r["rejected"])) if sc > sr else (_reply(r["rejected"]), _reply(r["chosen"]))
        agree += sc > sr
        out_rows.append({"id": r["id"], "prompt": r["prompt"], "chosen": _as_reply(r["prompt"], chosen),
                         "rejected": _as_reply(r["prompt"], rejected), "labeler_margin": abs(sc - sr)})
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(row_bytes(out_rows))
    tmp.replace(out_path)
    stats["num_pairs"] = len(out_rows)
    stats["agreement"] = agree / len(out_rows) if out_rows else None
    return stats


def update_reward_model(
    gen_dir: str | Path,
    rm_in: str,
    labeler: str,
    out_dir: str | Path,
    cfg: RMUpdateSection,
    *,
    seed: int,
    device: str = "auto",
    dtype: str = "auto",
    show_progress: bool = True,
    trust_remote_code: bool = False,
    allow_unsafe_weights: bool = False,
) -> dict:
    """Relabel the round's pairs and fine-tune `rm_in` on them into `out_dir` (built aside, then moved in).

    The loading switches apply to the labeller and to `rm_in` (the recipe's RM in round 0, so it may be pickle-only).
    """
    from bonsynth.rm.train import RMTrainConfig, train_reward_model

    gen_dir, out_dir = Path(gen_dir), Path(out_dir)
    pairs_path = out_dir.parent / "rm_pairs.jsonl"
    summary = relabel_pairs(gen_dir / "dpo.jsonl", labeler, pairs_path, device=device, dtype=dtype,
                            trust_remote_code=trust_remote_code, allow_unsafe_weights=allow_unsafe_weights)
    if summary["num_pairs"] < 2:
        summary["skipped"] = f"only {summary['num_pairs']} labelled pair(s); the RM is kept as it was"
        return summary
    # The record goes in with the model, so the runner can tell a finished update from a killed one.
    with build_dir_atomic(out_dir, overwrite=True, what="updated reward model") as partial:
        trained = train_reward_model(RMTrainConfig(
            base=rm_in, data=[str(pairs_path)], objective="pairwise", out=partial, epochs=cfg.epochs, lr=cfg.lr,
            batch_size=cfg.batch_size, max_length=cfg.max_length, eval_split=cfg.eval_split, seed=seed,
            lora_r=cfg.lora_r, disable_tqdm=not show_progress, trust_remote_code=trust_remote_code,
            allow_unsafe_weights=allow_unsafe_weights,
        ))
        for key in ("train_loss", "num_train", "num_eval", "reward_mean", "reward_std", "eval_accuracy"):
            if key in trained:
                summary[key] = trained[key]
        summary["runtime_s"] = trained.get("seconds")
        (partial / RM_UPDATE_SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n",
                                                 encoding="utf-8")
    return summary
