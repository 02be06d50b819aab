"""Write charts, tables and text as one self-contained HTML page plus PNGs.

The page embeds the Vega / Vega-Lite / vega-embed JavaScript once (bundled by
vl-convert, so it opens offline) and calls ``vegaEmbed`` once per chart.  Each
chart is also rendered to ``<name>.png`` at scale 2 with vl-convert.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import os
import re
from pathlib import Path
from typing import Union

import altair as alt
import pandas as pd
import vl_convert as vlc

from vocab.files import atomic_write, atomic_write_text, cache_dir, staged_dir

Section = Union[alt.TopLevelMixin, pd.DataFrame, str]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { border-bottom: 1px solid #ccc; padding-bottom: .3em; }
h2 { margin-top: 2em; }
table.dataframe { border-collapse: collapse; font-size: 0.9em; }
table.dataframe th, table.dataframe td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
table.dataframe th { background: #f3f3f3; }
.chart { margin: 1em 0; overflow-x: auto; }
.chart.error { color: #b00; white-space: pre-wrap; }
"""

# Runs once per chart: render, then flag the container so tests can tell.
_EMBED = """vegaEmbed(document.getElementById({id}), {spec}, {{renderer: "svg", actions: false}})
  .then(function () {{ document.getElementById({id}).dataset.rendered = "true"; }})
  .catch(function (err) {{
    var el = document.getElementById({id});
    el.classList.add("error"); el.textContent = "chart failed: " + err; console.error(err);
  }});"""


@functools.lru_cache(maxsize=1)
def vegalite_version() -> str | None:
    """The Vega-Lite version Altair targets, if vl-convert has it (else its latest)."""
    major_minor = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return major_minor if major_minor in vlc.get_vegalite_versions() else None


def _build_bundle() -> str:
    bundle = vlc.javascript_bundle(vl_version=vegalite_version())
    # "</script" would end the inline <script>; "<\/script" means the same to JS.
    return re.sub(r"</(script)", r"<\\/\1", bundle, flags=re.IGNORECASE)


@functools.lru_cache(maxsize=1)
def javascript_bundle() -> str:
    """vega + vega-lite + vega-embed as one inline-safe script (~1 MB, ~1.5 s to build). Built once per
    vl-convert and Vega-Lite version and kept in cache_dir() under a name hashing those inputs; an
    unreadable or unwritable cache only means building it again."""
    inputs = json.dumps({"vl_convert": vlc.__version__, "vega_lite": vegalite_version(), "escape": "script-v1"})
    path = cache_dir() / f"vega-bundle-{hashlib.sha256(inputs.encode()).hexdigest()[:16]}.js"
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    bundle = _build_bundle()
    try:
        atomic_write_text(path, bundle)
    except OSError:
        pass  # no cache: the next run builds it again
    return bundle


def _json_for_script(obj) -> str:
    """JSON that is safe inside an inline <script> ('<' escaped as a JS unicode escape)."""
    return json.dumps(obj).replace("<", "\\u003c")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "chart"


def chart_spec(chart: alt.TopLevelMixin) -> dict:
    """The chart's Vega-Lite spec with the data inlined."""
    return chart.to_dict()


def chart_png(spec: dict, scale: float = 2) -> bytes:
    return vlc.vegalite_to_png(spec, vl_version=vegalite_version(), scale=scale)


def _section_html(heading: str, content: Section, chart_id: str | None, spec: dict | None) -> str:
    parts = [f"<section>\n<h2>{html.escape(heading)}</h2>"]
    if spec is not None:
        parts.append(f'<div class="chart" id="{chart_id}" data-chart="{chart_id}"></div>')
        parts.append(f"<script>\n{_EMBED.format(id=json.dumps(chart_id), spec=_json_for_script(spec))}\n</script>")
    elif isinstance(content, pd.DataFrame):
        shown = content.map(lambda v: "–" if v is None or (isinstance(v, float) and v != v) else v)
        parts.append(shown.to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0))
    else:
        parts += [f"<p>{html.escape(p.strip())}</p>" for p in str(content).split("\n\n") if p.strip()]
    return "\n".join(parts) + "\n</section>"


def render_page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n"
            f"<script>{javascript_bundle()}</script>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n")


def _render_into(folder: Path, title: str, sections: list[tuple[str, Section]]) -> list[str]:
    """Write all files into ``folder``; return their names, report.html last."""
    names, blocks, used = [], [], set()
    for heading, content in sections:
        chart_id = spec = None
        if isinstance(content, alt.TopLevelMixin):
            chart_id = base = _slug(heading)
            n = 2
            while chart_id in used:
                chart_id, n = f"{base}_{n}", n + 1
            used.add(chart_id)
            spec = chart_spec(content)
            (folder / f"{chart_id}.png").write_bytes(chart_png(spec))
            names.append(f"{chart_id}.png")
        elif not isinstance(content, (pd.DataFrame, str)):
            raise TypeError(f"section {heading!r}: expected an Altair chart, DataFrame or str, got {type(content)}")
        blocks.append(_section_html(heading, content, chart_id, spec))
    (folder / "report.html").write_text(render_page(title, "\n".join(blocks)), encoding="utf-8")
    return names + ["report.html"]


def write_report(out_dir: str | os.PathLike, title: str,
                 sections: list[tuple[str, Section]]) -> dict[str, Path]:
    """Write ``report.html`` (self-contained, opens offline) and one ``<name>.png``
    per chart section into ``out_dir``; return ``{file name: path}``.

    ``sections`` is a list of ``(heading, content)`` where content is an Altair
    chart, a DataFrame (rendered as a table) or text (blank lines split
    paragraphs).  Chart file names are slugs of their headings.  Everything is
    rendered in a temporary folder beside ``out_dir`` first, so a failure
    leaves ``out_dir`` untouched.
    """
    out_dir = Path(out_dir).resolve()
    with staged_dir(out_dir, last="report.html") as staging:
        names = _render_into(staging, title, sections)
    return {name: out_dir / name for name in names}


def write_chart(chart: alt.TopLevelMixin, path_without_ext: str | os.PathLike) -> dict[str, Path]:
    """Write one chart as ``<path>.png`` (scale 2) and a self-contained ``<path>.html``."""
    base = Path(path_without_ext)
    base.parent.mkdir(parents=True, exist_ok=True)
    spec = chart_spec(chart)
    section = _section_html(base.name, chart, _slug(base.name), spec)
    outputs = {".png": chart_png(spec), ".html": render_page(base.name, section).encode("utf-8")}
    written = {}
    for ext, data in outputs.items():
        target = base.with_name(base.name + ext)
        atomic_write(target, lambda f, data=data: f.write(data), binary=True)
        written[target.name] = target
    return written
