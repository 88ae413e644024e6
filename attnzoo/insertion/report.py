"""InsertReport: every site an insertion filled, with its channels, map size, parameters and FLOPs.

FLOPs are those counted by ``torch.utils.flop_counter.FlopCounterMode`` on the inserted block alone,
at batch 1 and the (C, H, W) its site sees for the report's input size: matmuls and convolutions,
1 multiply-accumulate = 2 FLOPs. Elementwise ops (gates, activations, pooling, the rescaling
multiply) are not counted, so channel-attention blocks report only their FC/conv work.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SiteRecord", "InsertReport"]


@dataclass(frozen=True)
class SiteRecord:
    """One inserted block."""

    path: str  # qualified name of the inserted block, model.get_submodule(path) returns it
    host: str  # qualified name of the block (or module, for 'after:<glob>') it was put into
    position: str
    stage: int | None  # 1-based stage, None outside every stage
    block: int | None  # 0-based index of the host among the stage's candidate blocks
    channels: int
    spatial: tuple[int, int]  # (H, W) the site sees at the report's input size
    params: int
    flops: int
    replaced: str | None = None  # replace_attn: class of the module the block replaced (e.g. "timm SEModule")


@dataclass
class InsertReport:
    """What ``insert_attn`` did; ``str(report)`` is a table, ``to_dict()`` is JSON-able."""

    attn: str
    position: str
    init: str
    input_size: tuple[int, int, int]
    sites: list[SiteRecord] = field(default_factory=list)

    @property
    def total_params(self) -> int:
        return sum(s.params for s in self.sites)

    @property
    def total_flops(self) -> int:
        return sum(s.flops for s in self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {
            "attn": self.attn,
            "position": self.position,
            "init": self.init,
            "input_size": list(self.input_size),
            "sites": [{**asdict(s), "spatial": list(s.spatial)} for s in self.sites],
            "total_params": self.total_params,
            "total_flops": self.total_flops,
        }

    def __str__(self) -> str:
        replacing = any(s.replaced for s in self.sites)
        header = ["site", "replaces" if replacing else "position", "stage", "channels", "H x W", "params", "FLOPs"]
        rows = [
            [
                s.path,
                (s.replaced or "") if replacing else s.position,
                "-" if s.stage is None else str(s.stage),
                str(s.channels),
                f"{s.spatial[0]} x {s.spatial[1]}",
                f"{s.params:,}",
                _fmt_flops(s.flops),
            ]
            for s in self.sites
        ]
        rows.append(["total", "", "", "", "", f"{self.total_params:,}", _fmt_flops(self.total_flops)])
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        right = {2, 3, 4, 5, 6}

        def line(r: list[str]) -> str:
            return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

        sep = "  ".join("-" * w for w in widths)
        c, h, w = self.input_size
        title = (
            f"{'replace_attn' if replacing else 'insert_attn'}: {self.attn!s} at {self.position!r}, init={self.init!r}, "
            f"{len(self.sites)} site(s), input {c}x{h}x{w}"
        )
        note = ("FLOPs: torch.utils.flop_counter at batch 1 (matmul/conv only, 1 MAC = 2 FLOPs; "
                "elementwise ops not counted)")
        return "\n".join([title, line(header), sep, *map(line, rows[:-1]), sep, line(rows[-1]), note])

    def __repr__(self) -> str:
        return (f"InsertReport(attn={self.attn!r}, position={self.position!r}, sites={len(self.sites)}, "
                f"total_params={self.total_params}, total_flops={self.total_flops})")


def _fmt_flops(flops: int) -> str:
    if flops >= 1e9:
        return f"{flops / 1e9:.2f}G"
    if flops >= 1e6:
        return f"{flops / 1e6:.2f}M"
    if flops >= 1e3:
        return f"{flops / 1e3:.1f}K"
    return str(flops)
