"""Open report.html in headless Chromium, offline, and check every chart rendered.

Needs Debian's ``chromium`` (or ``chromium-browser``).  Skipped when it is
missing, except under CI (env var CI set), where a missing browser fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser

import altair as alt
import pytest

import reports

# Recorded into the DOM so --dump-dom shows it: Chromium's stderr log does not
# tell console.error from console.log.
_CAPTURE = """<script>
(function () {
  var errors = [];
  function record(kind, args) {
    errors.push(kind + ": " + Array.prototype.map.call(args, String).join(" "));
    document.documentElement.setAttribute("data-test-errors", JSON.stringify(errors));
  }
  var error = console.error;
  console.error = function () { record("console.error", arguments); error.apply(console, arguments); };
  window.addEventListener("error", function (e) { record("uncaught", [e.message]); });
  window.addEventListener("unhandledrejection", function (e) { record("unhandled rejection", [e.reason]); });
})();
</script>"""

_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",          # offline: any fetch would fail
    "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but no chromium binary was found (apt-get install -y chromium)")
        pytest.skip("no chromium / chromium-browser binary on PATH")
    return path


class _Charts(HTMLParser):
    """Per chart container (div.chart): its attributes and how many svg/canvas it holds."""

    def __init__(self):
        super().__init__()
        self.charts: dict[str, dict] = {}
        self.root_attrs: dict[str, str] = {}
        self._stack: list[str | None] = []   # chart id owning each open div, else None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "html":
            self.root_attrs = attrs
        current = next((c for c in reversed(self._stack) if c), None)
        if tag in ("svg", "canvas") and current:
            self.charts[current]["graphics"] += 1
        if tag == "div":
            is_chart = "chart" in (attrs.get("class") or "").split() and "data-chart" in attrs
            if is_chart:
                self.charts[attrs["id"]] = {"attrs": attrs, "graphics": 0}
            self._stack.append(attrs["id"] if is_chart else None)

    def handle_endtag(self, tag):
        if tag == "div" and self._stack:
            self._stack.pop()


def check_report_renders(report_html, tmp_path, expected_charts: int) -> None:
    """Open ``report_html`` in headless Chromium (offline) and assert that exactly ``expected_charts``
    charts rendered, each with an <svg>/<canvas>, and that nothing logged an error."""
    chromium = _chromium()
    # Test copy with the error capture first in <head>; the report itself is untouched.
    page = report_html.read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>\n" + _CAPTURE, 1), encoding="utf-8")

    profile = tmp_path / "profile"
    proc = subprocess.run(
        [chromium, *_FLAGS, f"--user-data-dir={profile}", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    parser = _Charts()
    parser.feed(proc.stdout)
    assert len(parser.charts) == expected_charts, f"chart containers found: {list(parser.charts)}"
    for chart_id, chart in parser.charts.items():
        assert chart["attrs"].get("data-rendered") == "true", f"{chart_id} did not finish rendering"
        assert chart["graphics"] >= 1, f"{chart_id} has no <svg>/<canvas>"
        assert "error" not in chart["attrs"].get("class", "").split(), f"{chart_id} failed"

    errors = json.loads(parser.root_attrs.get("data-test-errors", "[]"))
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    uncaught = [line for line in console if "Uncaught" in line or "Failed to load resource" in line]
    assert not errors and not uncaught, "\n".join(errors + uncaught)


def test_every_chart_renders_without_console_errors(tmp_path):
    _chromium()
    sweep = reports.synthetic_sweep()
    sections = reports.sweep_sections(sweep, 0.01, reports.synthetic_timeline(), "One decode step")
    sections.append(("Predicted only", reports.timeline_chart(reports.synthetic_timeline(False), "predicted")))
    written = reports.write_report(tmp_path / "out", "Engram sweep", sections)
    expected = [c for _, c in sections if isinstance(c, alt.TopLevelMixin)]
    check_report_renders(written["report.html"], tmp_path, len(expected))
