"""What every attention block shares: input checks, reduced widths, layer lookup, and the tap.

``AttnTap`` is the one hook point through which every block shows the attention it computed.
It is an identity module; a block passes the factor it multiplies into its input through it
(``x * self.tap(gate)``), so ``attnzoo.explain.capture_attention`` can read that factor with a
forward hook, with no per-block code and no cost when nothing is captured.
"""
from __future__ import annotations

import functools
import inspect
import numbers
import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import get_act_layer, make_divisible

__all__ = [
    "AttnTap", "BiaslessLinear", "SafeBatchNorm2d", "check_input", "check_channels", "check_heads", "reduced_channels", "resolve_layer",
]

TAP_KINDS = ("channel", "spatial", "query")


class AttnTap(nn.Module):
    """Identity that marks an attention factor for capture.

    kind:
      * ``"channel"``: a per-channel factor broadcast over H, W; shape (B, C, 1, 1) or (B, C).
      * ``"spatial"``: a per-position factor; shape (B, 1 or C, H, W) (or broadcastable to it).
      * ``"query"``: self-attention weights, (B, heads, N_query, H, W) with N_query = H*W; only
        computed by a block while ``active`` is True (attention done through SDPA never builds them).
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in TAP_KINDS:
            raise ValueError(f"AttnTap kind must be one of {TAP_KINDS}, got {kind!r}")
        self.kind = kind
        self.active = False  # set by capture; self-attention blocks build weights only then

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        return weights

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class BiaslessLinear(nn.Module):
    """``nn.Linear(in_features, out_features, bias=False)``, same weight, init and state_dict key
    (``weight``), but not an ``nn.Linear`` instance.

    timm's weight init for vovnet, efficientnet and the mobilenets runs ``zeros_(m.bias)`` on every
    ``nn.Linear`` it finds without checking for None, so a bias-free Linear inside a block put into
    their slots crashes the model's construction.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Linear's own initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias=False"


class SafeBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that also runs in training mode on a single value per channel.

    Attention blocks normalise pooled descriptors, so batch 1 (or batch 1 of a 1x1 map) in training
    mode leaves one value per channel, where torch's BatchNorm raises because batch statistics do
    not exist. Such a batch is normalised with the running statistics, which are left unchanged;
    every other batch is handled exactly as by ``nn.BatchNorm2d``. The choice depends on the input's
    shape only, never on its values. State-dict keys are those of ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1 and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


# widest feature map a block is built for: far above any CNN stage (2048-4096), far below a width
# whose weights would not fit in memory (rd_channels=10**12 would otherwise reach the allocator)
MAX_CHANNELS = 2**16


def _as_width(block: str, what: str, value: Any) -> int:
    """An integer width (int or numpy integer, never bool) <= MAX_CHANNELS, as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{block}: {what} must be an int (a number of channels), got {value!r} ({type(value).__name__})")
    value = operator.index(value)
    if value > MAX_CHANNELS:
        raise ValueError(f"{block}: {what}={value} is wider than attnzoo builds blocks for (at most "
                         f"{MAX_CHANNELS} = 2**16); pass the C of the feature map the block sees")
    return value


def check_channels(block: str, channels: Any, minimum: int = 1) -> int:
    """``channels`` must be an int (numpy integers too) in [``minimum``, MAX_CHANNELS]; say which block refused it."""
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral):
        raise TypeError(f"{block}: channels must be an int (the C of a (B, C, H, W) input), got {channels!r}")
    channels = _as_width(block, "channels", channels)
    if channels < minimum:
        raise ValueError(f"{block}: channels={channels} is too small; this block needs channels >= {minimum}")
    return channels


def check_heads(block: str, channels: int, num_heads: Any) -> int:
    """Attention heads must split ``channels`` evenly; name the head counts that would."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or channels % num_heads:
        raise ValueError(
            f"{block}: channels={channels} must be divisible by num_heads={num_heads}; "
            f"choose num_heads among {[h for h in range(1, min(channels, 16) + 1) if channels % h == 0]}"
        )
    return num_heads


def reduced_channels(
    block: str,
    channels: int,
    rd_ratio: float,
    rd_channels: int | None,
    rd_divisor: int,
) -> int:
    """Width of a reduction bottleneck, timm's convention: ``make_divisible(C * rd_ratio, rd_divisor)``.

    Raises when the reduction would leave less than one channel, instead of silently
    widening the bottleneck past what the user asked for.
    """
    channels = check_channels(block, channels)
    if rd_channels is not None:
        if isinstance(rd_channels, bool) or not isinstance(rd_channels, numbers.Integral) or rd_channels < 1:
            raise ValueError(f"{block}: rd_channels must be a positive int, got {rd_channels!r}")
        return _as_width(block, "rd_channels", rd_channels)
    if isinstance(rd_ratio, bool) or not isinstance(rd_ratio, numbers.Real):
        raise TypeError(f"{block}: rd_ratio must be a number in (0, 1], got {rd_ratio!r} ({type(rd_ratio).__name__})")
    if isinstance(rd_divisor, bool) or not isinstance(rd_divisor, numbers.Integral) or rd_divisor < 1:
        raise ValueError(f"{block}: rd_divisor must be a positive int, got {rd_divisor!r}")
    if not 0 < rd_ratio <= 1:
        raise ValueError(f"{block}: rd_ratio must be in (0, 1], got {rd_ratio!r}")
    if channels * rd_ratio < 1:
        raise ValueError(
            f"{block}: channels={channels} is too small for rd_ratio={rd_ratio:g} "
            f"(it would reduce to {channels * rd_ratio:g} channels); use channels >= {int(-(-1 // rd_ratio))}, "
            f"a larger rd_ratio, or set rd_channels explicitly"
        )
    return make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)


def resolve_layer(block: str, what: str, layer: str | type[nn.Module] | Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """An activation/gate given as a name ('relu', 'sigmoid', 'hard_sigmoid', ...) or a class."""
    try:
        resolved = get_act_layer(layer)
    except Exception as e:  # timm raises a bare KeyError/AssertionError for unknown names
        raise ValueError(f"{block}: unknown {what} {layer!r}; use a torch.nn module class or a timm name "
                         f"such as 'relu', 'silu', 'gelu', 'sigmoid', 'hard_sigmoid'") from e
    if resolved is None:
        raise ValueError(f"{block}: {what} must not be None")
    if not _takes_inplace(resolved):  # e.g. torch's nn.GELU, which timm passes as act_layer too
        return functools.partial(_drop_inplace, resolved)
    return resolved


def _takes_inplace(layer: Callable[..., nn.Module]) -> bool:
    try:
        params = inspect.signature(layer).parameters
    except (TypeError, ValueError):
        return True
    return "inplace" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _drop_inplace(layer: Callable[..., nn.Module], *args: Any, inplace: bool = False, **kwargs: Any) -> nn.Module:
    """Build an activation that has no ``inplace`` argument from a call that passes one."""
    return layer(*args, **kwargs)


def check_input(block: nn.Module, x: torch.Tensor) -> None:
    """A block takes (B, C, H, W) with its own C; anything else gets a message that says so."""
    channels = getattr(block, "channels", None)
    name = type(block).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor of shape (B, {channels}, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-D input (B, C={channels}, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name} was built for {channels} channels but got an input with {x.shape[1]} "
            f"(shape {tuple(x.shape)}); build it with channels={x.shape[1]}"
        )
