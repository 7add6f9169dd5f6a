"""Merge methods: a registry of small classes, one per `merge_method`, each merging one tensor at a time.

Semantics follow mergekit 0.1.5 (worked out from its docs and source, not copied):

- passthrough: the single input, times an optional per-input `scale`. At most one input per tensor.
- linear: sum(w_i x_i), divided by sum(w_i) when `normalize` (default true). base_model is ignored (if given but
  not listed under `models`, it becomes an input without a weight, which is an error, as in mergekit).
- slerp: spherical interpolation from the base (t=0) to the other model (t=1), over each whole tensor flattened;
  falls back to linear interpolation when |cos| > 0.9995. Exactly two inputs, one the base; `t` required.
- task_arithmetic / ties / dare_ties / dare_linear: deltas d_i = x_i - base, then
    1. sparsify each delta to `density` (default 1.0): ties keeps the top-k magnitudes (k = max(1, int(density*n)));
       dare_* keeps each entry with probability `density` (a Bernoulli drop);
       with `rescale` (default true for dare_*, false for ties) the kept delta is scaled to keep the L1 norm
       of the delta (mergekit 0.1.5's rescale; older mergekit divided by density);
    2. weight: d_i *= w_i (`weight` is required for every non-base model);
    3. ties / dare_ties elect a sign per entry, sign(sum_i w_i d_i) (zero counts as +), and keep only the
       weighted deltas that agree (a zero delta never agrees);
    4. sum; with `normalize` (default true for ties, false otherwise) divide by the sum of the weights of the
       kept deltas (ties: per entry, the disjoint weighted mean; 0 -> 1) or by sum(w_i) (|sum| < 1e-8 -> 1);
    5. multiply by `lambda` (default 1) and add to the base.
  `int8_mask` is accepted and has no numeric effect (mergekit uses it only to store the mask in int8).

Deliberate differences from mergekit:
- top-k uses a selection (`kthvalue`), not a full sort; ties at the threshold are kept in index order
  (mergekit's order among equal magnitudes is whatever argsort returns).
- DARE draws each mask from its own generator seeded by (random seed, tensor name, model), on the CPU:
  the same seed gives the same merge whatever the execution order or device. mergekit seeds the global RNG
  once, so its masks depend on its scheduler; the two cannot be bit-identical. Without `--random-seed` a
  seed is drawn and reported, so any merge can be reproduced.
- Half-precision arithmetic: inputs are rounded to `dtype`, but the arithmetic runs in float32 and the result
  is rounded once at the end (mergekit computes in `dtype` itself).
- linear with `normalize` and weights summing to zero is an error (mergekit divides by zero).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bonsynth.errors import BonsynthError, ConfigError

REQUIRED = object()


@dataclass(frozen=True)
class ParamSpec:
    """A parameter a method reads. scope: shared (one per tensor), input (every model), non_base (not the base)."""

    name: str
    scope: str
    default: Any = REQUIRED
    kind: type = float


@dataclass
class Entry:
    """One model's input to one output tensor; `load()` reads it (already in the arithmetic dtype and device)."""

    key: str
    load: Callable[[], torch.Tensor]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TensorGroup:
    """Everything a method needs to produce one output tensor."""

    name: str
    base: Entry | None
    others: list[Entry]
    shared: dict[str, Any]
    seed: int = 0

    def generator(self, entry: Entry) -> torch.Generator:
        """A CPU generator seeded by (seed, tensor, model): masks do not depend on order or device."""
        digest = hashlib.sha256(f"{self.seed}\x00{self.name}\x00{entry.key}".encode()).digest()
        g = torch.Generator(device="cpu")
        g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        return g


class MergeMethod:
    """Base class: declares parameters and input rules; `merge` returns the merged tensor."""

    name: ClassVar[str]
    parameters: ClassVar[tuple[ParamSpec, ...]] = ()
    base_required: ClassVar[bool] = False  # False: base_model is ignored (treated as an ordinary input)
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = None
    random: ClassVar[bool] = False

    def check_inputs(self, models: list[str], base: str | None, where: str) -> None:
        """Structural checks per output slice, before any tensor is read."""
        if len(set(models)) != len(models):
            raise ConfigError(f"{where}: a model is listed twice for merge_method {self.name}")
        if self.base_required:
            if base is None:
                raise ConfigError(f"merge_method {self.name} needs a base_model")
            if base not in models:
                raise ConfigError(f"{where}: the base model '{base}' is not one of the inputs")
        n = len(models)
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            if self.max_inputs == self.min_inputs:
                want = f"exactly {self.min_inputs}"
            elif self.max_inputs is None:
                want = f"at least {self.min_inputs}"
            else:
                want = f"{self.min_inputs} to {self.max_inputs}"
            raise ConfigError(f"{where}: merge_method {self.name} takes {want} input model(s), got {n}")

    def merge(self, group: TensorGroup) -> torch.Tensor:
        raise NotImplementedError


_REGISTRY: dict[str, MergeMethod] = {}

# mergekit methods bonsynth does not implement: named in the error so users know it is not a typo.
_MERGEKIT_ONLY = ("della", "della_linear", "breadcrumbs", "breadcrumbs_ties", "model_stock", "nuslerp",
                  "multislerp", "karcher", "sce", "nearswap", "arcee_fusion", "ram", "ramplus_tl")


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    if cls.name in _REGISTRY:
        raise ValueError(f"merge method {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def check_method_name(name: str) -> None:
    if name in _REGISTRY:
        return
    supported = ", ".join(method_names())
    if name in _MERGEKIT_ONLY:
        raise ValueError(f"merge_method '{name}' is a mergekit method bonsynth does not implement (supported: {supported})")
    raise ValueError(f"unknown merge_method '{name}' (supported: {supported})")


def get_method(name: str) -> MergeMethod:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown merge_method '{name}' (supported: {', '.join(method_names())})") from None


# ---------------------------------------------------------------------------------------------- sparsification


def topk_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of the k = max(1, int(density * n)) largest |delta|, by selection (kthvalue), not a sort."""
    n = delta.numel()
    k = max(1, int(density * n))
    if density >= 1 or k >= n:
        return torch.ones_like(delta, dtype=torch.bool)
    mag = delta.abs().reshape(-1)
    if mag.dtype in (torch.float16, torch.bfloat16):
        mag = mag.float()
    threshold = torch.kthvalue(mag, n - k + 1).values  # the k-th largest magnitude
    mask = mag >= threshold
    excess = int(mask.sum()) - k
    if excess > 0:  # entries equal to the threshold: keep the lowest indices, drop the rest
        ties = torch.nonzero(mag == threshold).reshape(-1)
        mask[ties[ties.numel() - excess:]] = False
    return mask.reshape(delta.shape)


def bernoulli_mask(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Keep each entry with probability `density` (DARE's drop), drawn on the CPU for device independence."""
    probs = torch.full(delta.shape, float(density), dtype=torch.float32)
    return torch.bernoulli(probs, generator=generator).to(device=delta.device, dtype=torch.bool)


def l1_rescaled(delta: torch.Tensor, mask: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Masked delta scaled back to the delta's L1 norm (mergekit 0.1.5's `rescale`); unscaled if either is ~0."""
    masked = delta * mask
    before = delta.abs().sum(dtype=torch.float64)
    after = masked.abs().sum(dtype=torch.float64)
    if before < eps or after < eps:
        return masked
    return masked * (before / after).to(delta.dtype)


# ----------------------------------------------------------------------------------------------------- methods


@register
class Passthrough(MergeMethod):
    """Copy the one input (optionally scaled): slicing and frankenmerges."""

    name = "passthrough"
    parameters = (ParamSpec("scale", "input", None),)
    max_inputs = 1

    def merge(self, group: TensorGroup) -> torch.Tensor:
        (entry,) = group.others
        x = entry.load()
        scale = entry.params.get("scale")
        return x if scale is None else x * scale


@register
class Linear(MergeMethod):
    """Weighted average (or weighted sum without `normalize`) of all inputs."""

    name = "linear"
    parameters = (ParamSpec("weight", "input"), ParamSpec("normalize", "shared", True, bool))

    def merge(self, group: TensorGroup) -> torch.Tensor:
        total: torch.Tensor | None = None
        weight_sum = 0.0
        for e in group.others:
            w = float(e.params["weight"])
            x = e.load()
            total = x * w if total is None else total.add_(x, alpha=w)
            weight_sum += w
            del x
        assert total is not None
        if group.shared["normalize"]:
            if weight_sum == 0:
                raise BonsynthError(f"linear merge of {group.name}: the weights sum to 0 and normalize is on")
            total /= weight_sum
        return total


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation between two whole tensors (flattened); linear when nearly (anti)parallel."""
    a = v0.reshape(-1)
    b = v1.reshape(-1)
    na = torch.linalg.vector_norm(a)
    nb = torch.linalg.vector_norm(b)
    na = na if na > eps else torch.ones_like(na)
    nb = nb if nb > eps else torch.ones_like(nb)
    dot = torch.dot(a / na, b / nb).clamp(-1, 1)
    if abs(float(dot)) > dot_threshold:
        return (1 - t) * v0 + t * v1
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    ca = torch.sin((1 - t) * theta) / sin_theta
    cb = torch.sin(t * theta) / sin_theta
    return ca * v0 + cb * v1


@register
class Slerp(MergeMethod):
    """SLERP between the base (t=0) and one other model (t=1)."""

    name = "slerp"
    parameters = (ParamSpec("t", "shared"),)
    base_required = True
    min_inputs = 2
    max_inputs = 2

    def merge(self, group: TensorGroup) -> torch.Tensor:
        assert group.base is not None and len(group.others) == 1
        return slerp(float(group.shared["t"]), group.base.load(), group.others[0].load())


class TaskArithmeticFamily(MergeMethod):
    """Generalized task arithmetic: sparsify deltas, weight, optionally elect signs, sum, scale, add to base."""

    sparsify: ClassVar[str | None] = None  # None | "magnitude" | "random"
    consensus: ClassVar[bool] = False
    default_normalize: ClassVar[bool] = False
    default_rescale: ClassVar[bool] = False
    base_required = True

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.parameters = (
            ParamSpec("weight", "non_base"),
            ParamSpec("density", "non_base", 1.0),
            ParamSpec("normalize", "shared", cls.default_normalize, bool),
            ParamSpec("rescale", "shared", cls.default_rescale, bool),
            ParamSpec("lambda", "shared", 1.0),
            ParamSpec("int8_mask", "shared", False, bool),
        )
        cls.random = cls.sparsify == "random"

    def merge(self, group: TensorGroup) -> torch.Tensor:
        assert group.base is not None
        base = group.base.load()
        if not group.others:
            return base
        rescale = bool(group.shared["rescale"])
        deltas: list[torch.Tensor] = []
        weights: list[float] = []
        for e in group.others:
            delta = e.load().sub_(base)
            density = float(e.params["density"])
            if self.sparsify is not None and density < 1:
                if self.sparsify == "magnitude":
                    mask = topk_mask(delta, density)
                else:
                    mask = bernoulli_mask(delta, density, group.generator(e))
                delta = l1_rescaled(delta, mask) if rescale else delta.mul_(mask)
                del mask
            w = float(e.params["weight"])
            deltas.append(delta.mul_(w))
            weights.append(w)

        if self.consensus:
            majority = torch.where(_sum(deltas) >= 0, 1.0, -1.0).to(base.dtype)
            mixed = torch.zeros_like(base)
            divisor = torch.zeros_like(base)
            for d, w in zip(deltas, weights, strict=True):
                agree = (d * majority) > 0  # sign(d) == majority; a zero delta never agrees
                mixed += torch.where(agree, d, 0.0)
                divisor += torch.where(agree, w, 0.0)
            divisor[divisor == 0] = 1
        else:
            mixed = _sum(deltas)
            divisor = torch.tensor(sum(weights), dtype=base.dtype)
            if divisor.abs() < 1e-8:
                divisor = torch.ones_like(divisor)
        del deltas
        if group.shared["normalize"]:
            mixed /= divisor
        lam = float(group.shared["lambda"])
        if lam != 1:
            mixed *= lam
        return base + mixed


def _sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    out = tensors[0].clone()
    for t in tensors[1:]:
        out += t
    return out


@register
class TaskArithmetic(TaskArithmeticFamily):
    name = "task_arithmetic"


@register
class Ties(TaskArithmeticFamily):
    name = "ties"
    sparsify = "magnitude"
    consensus = True
    default_normalize = True


@register
class DareTies(TaskArithmeticFamily):
    name = "dare_ties"
    sparsify = "random"
    consensus = True
    default_rescale = True


@register
class DareLinear(TaskArithmeticFamily):
    name = "dare_linear"
    sparsify = "random"
    default_rescale = True


def weighted_average(name: str, entries: list[Entry], weights: list[float]) -> torch.Tensor:
    """sum(w_i x_i) / sum(w_i): how a tensor that the base lacks (e.g. a reward head) is merged."""
    total_w = sum(weights)
    if total_w == 0:
        raise BonsynthError(f"{name}: the base has no such tensor and the weights of the models that do sum to 0")
    total: torch.Tensor | None = None
    for e, w in zip(entries, weights, strict=True):
        x = e.load()
        total = x * w if total is None else total.add_(x, alpha=w)
    assert total is not None
    return total / total_w
