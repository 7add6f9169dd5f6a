"""The datasets `generate` writes, and the durable, resumable way it writes them.

Files in OUT:
- candidates.jsonl: every candidate with its reward(s), finish reason and token counts;
- sft.jsonl: TRL prompt/completion rows (or `messages` for chat prompts);
- dpo.jsonl: TRL prompt/chosen/rejected rows with their scores;
- state.json: how far the run got (prompts done, byte length of each file) for `--resume`;
- manifest.json: written at the end from the files themselves, so a resumed run gets the same one.

Each batch is appended, flushed and fsync'ed, and only then is state.json replaced (atomically). A run
killed at any moment resumes by cutting each file back to the lengths in state.json, so nothing is lost
or duplicated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from bonsynth.data.records import PromptRecord
from bonsynth.data.writers import dumps_row, write_text_atomic
from bonsynth.errors import io_errors

CANDIDATES = "candidates.jsonl"
SFT = "sft.jsonl"
DPO = "dpo.jsonl"
STATE = "state.json"
MANIFEST = "manifest.json"
DATA_FILES = (CANDIDATES, SFT, DPO)


def row_bytes(rows: Iterable[dict]) -> bytes:
    """The compact JSONL lines of `rows`, UTF-8 encoded (`dumps_row`: a NaN or inf raises, never `NaN`)."""
    return "".join(dumps_row(r, compact=True) for r in rows).encode("utf-8")


def sft_row(rec: PromptRecord, text: str, reward: float) -> dict:
    if rec.is_chat:
        return {"id": rec.id, "messages": list(rec.prompt) + [{"role": "assistant", "content": text}], "reward": reward}
    return {"id": rec.id, "prompt": rec.prompt, "completion": text, "reward": reward}


def dpo_row(rec: PromptRecord, chosen: str, rejected: str, score_chosen: float, score_rejected: float) -> dict:
    if rec.is_chat:
        return {
            "id": rec.id,
            "prompt": list(rec.prompt),
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "score_chosen": score_chosen,
            "score_rejected": score_rejected,
        }
    return {"id": rec.id, "prompt": rec.prompt, "chosen": chosen, "rejected": rejected,
            "score_chosen": score_chosen, "score_rejected": score_rejected}


def write_json_atomic(path: Path, obj: dict) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    with io_errors(path):
        write_text_atomic(path, text)


class DurableWriter:
    """Appends batches to the data files and records progress in state.json after each one."""

    def __init__(self, out: Path, state: dict) -> None:
        self.out = out
        self.state = state
        self.handles = {}
        offsets = state.setdefault("offsets", {name: 0 for name in DATA_FILES})
        for name in DATA_FILES:
            path = out / name
            # Cut back anything written after the last recorded batch (a crash between append and state).
            with open(path, "ab") as fh:
                fh.truncate(offsets.get(name, 0))
            self.handles[name] = open(path, "ab")

    def append_batch(self, rows: dict[str, Iterable[dict]], prompts_done: int) -> None:
        for name in DATA_FILES:
            fh = self.handles[name]
            data = row_bytes(rows.get(name, ()))
            with io_errors(self.out / name):  # disk full: one line naming the file; --resume cuts the tail off
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            self.state["offsets"][name] = fh.tell()
        self.state["prompts_done"] = prompts_done
        write_json_atomic(self.out / STATE, self.state)

    def close(self) -> None:
        for fh in self.handles.values():
            try:
                fh.close()
            except OSError:
                pass  # a write that failed (disk full) is still buffered; --resume cuts the files back anyway
        self.handles = {}


def iter_jsonl(path: Path):
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
