"""Calibration sanity: each measured figure against its physical bounds (bounds.py) and each measurement's
repeats against SPREAD_LIMIT. What fails is re-measured by the command (a bounded number of times); what
still fails is flagged here: a comment beside the figure, a line in provenance.notes, a warning on stderr.
"""

from __future__ import annotations

import dataclasses
import re
import sys

from real_runs.timing import Spread
from tools.calibrate.bounds import BOUNDS, SPREAD_LIMIT, fields_of

FLAG = "FLAGGED"


@dataclasses.dataclass(frozen=True)
class Finding:
    """A figure that failed a check: the profile field, the step that measures it, why."""
    field: str
    step: str
    reason: str


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def check_bounds(profile: dict, steps_run) -> list[Finding]:
    """Findings for the figures of the steps that ran which lie outside their bounds."""
    found = []
    for b in BOUNDS.values():
        table, name = b.field.split(".")
        if b.step not in steps_run or name not in profile.get(table, {}):
            continue
        value = profile[table][name]
        values = [p[b.point] for p in value] if b.point else [value]
        bad = [v for v in map(_number, values) if v is not None and not b.holds(v)]
        if bad:
            what = f"{bad[0]:.4g} {b.unit}" + (f" (a point's {b.point}; {len(bad)} of {len(values)} points)"
                                              if b.point else "")
            found.append(Finding(b.field, b.step, f"{what} is outside {b.describe()}"))
    return found


def worst_spread(spreads: list) -> Spread | None:
    """The spread of these whose median is the most times its fastest."""
    return max(spreads, key=lambda s: s.median / s.min, default=None)


def check_spreads(spread_log: dict) -> list[Finding]:
    """Findings for the fields of each step one of whose measurements' repeats spread beyond SPREAD_LIMIT.
    spread_log: {label: (step, [Spread, ...])}, as the command records it."""
    worst: dict[str, tuple] = {}
    for label, (step, spreads) in spread_log.items():
        s = worst_spread(spreads)
        if s and s.median / s.min > SPREAD_LIMIT and s.median / s.min > worst.get(step, (0,))[0]:
            worst[step] = (s.median / s.min, label, s)
    found = []
    for step, (ratio, label, s) in worst.items():
        reason = (f"its repeats spread too widely: at '{label}' the median took x{ratio:.3g} the fastest "
                  f"(min/median/max {format_spread(s)}; the limit is x{SPREAD_LIMIT:g})")
        found += [Finding(field, step, reason) for field in fields_of(step)]
    return found


def format_spread(s: Spread) -> str:
    """'10.2/11/40.3 us', '1.19/1.29/1.56 ms': in the unit that suits the median."""
    scale, unit = (1e6, "us") if s.median < 1e-3 else (1e3, "ms") if s.median < 1 else (1, "s")
    return f"{s.min * scale:.3g}/{s.median * scale:.3g}/{s.max * scale:.3g} {unit}"


def spread_comments(spread_log: dict, steps) -> list[str]:
    """Comment lines: each measurement's repeats as min/median/max, one line a step (of `steps`)."""
    lines = []
    for step in steps:
        parts = [f"{label} {format_spread(worst_spread(spreads))}" for label, (st, spreads) in spread_log.items()
                 if st == step and spreads]
        if parts:
            lines.append(f"  {step}: " + ", ".join(parts))
    return ([f"repeats of each measurement, min/median/max (the median is the figure; a median over "
             f"x{SPREAD_LIMIT:g} the fastest is re-measured, then flagged):"] + lines) if lines else []


def flag(profile: dict, findings: list[Finding], tries: int) -> list[str]:
    """Add each finding to provenance.notes; return the warning lines (one a field)."""
    lines = [f"{FLAG} {f.field}: {f.reason}, after {tries} re-measurement{'s' * (tries != 1)}; check that the "
             f"machine is idle and run calibrate again" for f in _one_per_field(findings)]
    if lines:
        prov = profile["provenance"]
        prov["notes"] = ". ".join([prov["notes"], *lines]) if prov.get("notes") else ". ".join(lines)
    return lines


def _one_per_field(findings: list[Finding]) -> list[Finding]:
    seen: dict[str, Finding] = {}
    for f in findings:
        seen.setdefault(f.field, f)
    return list(seen.values())


def annotate(text: str, findings: list[Finding]) -> str:
    """The profile's TOML with a `# FLAGGED: why` comment at the end of each flagged figure's line."""
    by_key = {tuple(f.field.split(".")): f for f in _one_per_field(findings)}
    out, table = [], ""
    for line in text.split("\n"):
        header = re.match(r"^\[+([^\]]+)\]+\s*$", line)
        if header:
            table = header.group(1).strip()
        key = re.match(r"^([A-Za-z0-9_]+)\s*=", line)
        f = by_key.get((table, key.group(1))) if key else None
        if f is not None:
            line = f"{line}  # {FLAG}: {f.reason}"
        out.append(line)
    return "\n".join(out)


def warn(lines: list[str]) -> None:
    for line in lines:
        print(f"engram-sim: warning: calibrate: {line}", file=sys.stderr)
