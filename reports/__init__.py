"""Reporting layer: Altair charts over simulator sweeps and a self-contained HTML report."""

from reports.charts import (
    bytes_chart,
    hidden_summary,
    overhead_chart,
    stall_chart,
    sweep_sections,
    synthetic_sweep,
    synthetic_timeline,
    throughput_chart,
    timeline_chart,
)
from reports.html import write_chart, write_report

__all__ = [
    "bytes_chart", "hidden_summary", "overhead_chart", "stall_chart", "sweep_sections", "synthetic_sweep",
    "synthetic_timeline", "throughput_chart", "timeline_chart", "write_chart", "write_report",
]
