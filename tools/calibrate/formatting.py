"""Figures as calibrate writes them in progress labels, comments and notes."""

from __future__ import annotations

from vocab.units import GiB, KiB, MiB


def human_bytes(n: float) -> str:
    """4096 -> '4 KiB', 1.5 GiB -> '1.5 GiB', below 1 KiB in bytes."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n:.0f} B"


def format_points(d: dict, key_fmt=str, val_fmt="{:.4g}") -> str:
    """{x: y} as 'x: y, ...' sorted by x."""
    return ", ".join(f"{key_fmt(k)}: {val_fmt.format(v)}" for k, v in sorted(d.items()))
