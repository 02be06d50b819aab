"""The validate command: the simulator against the published measurements, printed and written as CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cli.args import CliError, choices
from profiles import load_profile
from tools.table4 import table4_assumptions, table4_runs
from tools.validate import FETCH_SERIES, SETS, Validation, validate
from vocab.files import check_writable_dir, staged_dir

TITLES = {
    "e2e": "H100 end-to-end decode (h100-e2e-decode-b512.json)",
    "fetch": "H100 per-step fetch (h100-step-fetch.json), microseconds",
    "table4": "Paper Table 4 (paper-table4.json) as serving runs, output tokens/s and overhead vs none",
}
# Printed columns of each set's wide table: (column, heading, format).
E2E_VIEW = [
    ("run", "run", "{}"), ("measured_step_ms", "step ms", "{:.3f}"), ("predicted_step_ms", "pred", "{:.3f}"),
    ("step_err_pct", "err %", "{:+.1f}"), ("measured_tok_s", "tok/s", "{:,.0f}"),
    ("predicted_tok_s", "pred", "{:,.0f}"), ("tok_s_err_pct", "err %", "{:+.1f}"),
    ("measured_vs_hbm_pct", "vs hbm %", "{:+.2f}"), ("predicted_vs_hbm_pct", "pred", "{:+.2f}"),
    ("vs_hbm_err_pp", "err pp", "{:+.2f}"), ("measured_vs_none_pct", "vs none %", "{:+.2f}"),
    ("predicted_vs_none_pct", "pred", "{:+.2f}"), ("vs_none_err_pp", "err pp", "{:+.2f}"),
]
FETCH_VIEW = [("table_gib", "GiB", "{:g}"), ("row_bytes", "row B", "{}"), ("rows", "rows", "{:,}")] + [
    view for key, what in (("uva", "UVA"), ("cpu_gather", "CPU"), ("cpu_path", "CPU+H2D"))
    for view in ((f"measured_{key}_us", what, "{:,.0f}"), (f"predicted_{key}_us", "pred", "{:,.0f}"),
                 (f"{key}_err_pct", "err %", "{:+.0f}"))]
TABLE4_VIEW = [
    ("backbone", "backbone", "{}"), ("placement", "placement", "{}"), ("measured_vs_none_pct", "measured %", "{:.2f}"),
    ("predicted_vs_none_pct", "predicted %", "{:.2f}"), ("vs_none_err_pp", "err pp", "{:+.2f}"),
    ("measured_none_tok_s", "tok/s none", "{:,.0f}"), ("predicted_none_tok_s", "pred", "{:,.0f}"),
    ("none_tok_s_err_pct", "err %", "{:+.0f}"), ("predicted_tok_s", "pred tok/s", "{:,.0f}"),
]
VIEWS = {"e2e": E2E_VIEW, "fetch": FETCH_VIEW, "table4": TABLE4_VIEW}


def format_wide(df: pd.DataFrame, view) -> str:
    """A set's table, right-aligned, blanks where a figure does not apply."""
    cells = [[_cell(fmt, v) for v in df[col]] for col, _, fmt in view]
    widths = [max(len(head), *(len(c) for c in col)) for (_, head, _), col in zip(view, cells)]
    lines = ["  ".join(head.rjust(w) for (_, head, _), w in zip(view, widths))]
    lines += ["  ".join(col[i].rjust(w) for col, w in zip(cells, widths)) for i in range(len(df))]
    return "\n".join(lines)


def _cell(fmt: str, value) -> str:
    if isinstance(value, float) and value != value:  # NaN: the figure does not apply
        return ""
    return fmt.format(value)


def format_summary(name: str, summary: dict) -> str:
    if name == "fetch":
        return "\n".join(f"  {what:22s} |error| median {summary[f'{key}_abs_err_pct_median']:.1f} %, "
                         f"max {summary[f'{key}_abs_err_pct_max']:.1f} % ({summary['shapes']} shapes)"
                         for key, what in FETCH_SERIES.items())
    return ""


def format_targets(targets: pd.DataFrame) -> str:
    return "\n".join(f"  {r.result:4s}  {r.target}: {r.figure:.2f} {r.unit} (target <= {r.limit:g} {r.unit})"
                     for r in targets.itertuples())


def print_validation(v: Validation) -> None:
    for name, df in v.tables.items():
        print(f"== {TITLES[name]}")
        print(format_wide(df, VIEWS[name]))
        summary = format_summary(name, v.summary[name])
        if summary:
            print(summary)
        for note in v.notes.get(name, []):
            print(f"  note: {note}")
        print()
    if len(v.targets):
        print("Targets:")
        print(format_targets(v.targets))


def cmd_validate(args) -> int:
    check_writable_dir(args.out, "--out")
    sets = choices("--sets", args.sets, SETS) if args.sets is not None else list(SETS)
    if args.profile:
        load_profile(args.profile)  # a bad name fails here, before any work
    out = Path(args.out)
    if args.assumptions and "table4" not in sets:
        raise CliError("--assumptions", "reruns the table4 set", "add table4 to --sets (or leave --sets out)")
    v = validate(sets, args.profile)
    print_validation(v)
    assumptions = table4_assumptions(table4_runs()) if args.assumptions else None
    if assumptions is not None:
        print_assumptions(assumptions)
    with staged_dir(out) as tmp:
        v.points.to_csv(tmp / "validate.csv", index=False)
        v.targets.to_csv(tmp / "targets.csv", index=False)
        if assumptions is not None:
            assumptions.to_csv(tmp / "table4_assumptions.csv", index=False)
    print(f"\nwrote {out / 'validate.csv'} ({len(v.points)} points) and {out / 'targets.csv'}"
          + (f" and {out / 'table4_assumptions.csv'}" if assumptions is not None else ""))
    return 0


def print_assumptions(df: pd.DataFrame) -> None:
    """Each assumption's overhead vs none per backbone, and how far it moves from the presets' answer."""
    backbones = [c for c in df.columns if c != "assumption" and not c.endswith(" change pp")]
    print("\n== Paper Table 4: each assumption changed alone (overhead vs none, %; change from the presets, pp)")
    width = max(len(a) for a in df.assumption)
    print(f"  {'assumption':{width}s}" + "".join(f"{b:>10s} {'change':>7s}" for b in backbones))
    for r in df.to_dict("records"):
        print(f"  {r['assumption']:{width}s}" + "".join(f"{r[b]:10.2f} {r[b + ' change pp']:+7.2f}" for b in backbones))
    moves = df.iloc[1:].assign(most=lambda d: d[[b + " change pp" for b in backbones]].abs().max(axis=1))
    top = moves.sort_values("most", ascending=False).iloc[0]
    print(f"  moves the answer most: {top.assumption} ({top.most:.2f} pp)")


def register(sub) -> None:
    p = sub.add_parser("validate", help="the simulator against every published measurement (profiles/reference/)")
    p.add_argument("--sets", help=f"comma-separated reference sets (default: all of {', '.join(SETS)})")
    p.add_argument("--profile", help="hardware profile for the e2e set (default: the preset's, h100-sxm)")
    p.add_argument("--out", default="out/validate", help="output folder: validate.csv, targets.csv "
                                                         "(default out/validate)")
    p.add_argument("--assumptions", action="store_true",
                   help="also rerun paper Table 4 with each of its presets' assumptions changed alone (~1 min)")
    p.set_defaults(func=cmd_validate)
