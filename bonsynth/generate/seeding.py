"""Per-prompt seeds: derived from the run seed and the prompt id, never from a position in a batch.

That makes outputs independent of batch size, shard split and resume.
"""

from __future__ import annotations

import hashlib


def prompt_seed(run_seed: int, prompt_id: str, salt: str = "") -> int:
    """A 31-bit seed for one prompt (fits every engine's seed field)."""
    digest = hashlib.sha256(f"{run_seed}\x00{prompt_id}\x00{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFFFFFF


def segment_seed(run_seed: int, prompt_id: str, index: int, segment: int) -> int:
    """The seed of candidate `index`'s segment `segment` under pruning (`bonsynth.generate.prune`): a survivor
    continues from its kept tokens with a fresh seed per segment, so its text depends on nothing but these four."""
    return prompt_seed(run_seed, prompt_id, salt=f"sample-{index}-segment-{segment}")
