"""A run's report as one self-contained HTML page: `report.md` rendered, its plots inlined as `data:` URIs.

A REST user opens `GET /v1/runs/{id}/report.html` in a browser and sees the tables and plots at once, with no
further requests (the page works offline and behind the API token). Raw HTML in the markdown is escaped: the
report quotes model-written text (dead-letter errors, task ids), which must not become markup.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from markdown_it import MarkdownIt

_PLOT_SRC = re.compile(r"^plots/[A-Za-z0-9_.-]+\.png$")

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5rem 0 1.5rem; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""


def _markdown(run_dir: Path) -> MarkdownIt:
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    plots = run_dir / "plots"

    def image(renderer, tokens, idx, options, env):  # bound as a method of the renderer
        token = tokens[idx]
        src = token.attrGet("src") or ""
        alt = html.escape(token.content, quote=True)
        if _PLOT_SRC.match(src) and (plots / Path(src).name).is_file():
            data = base64.b64encode((plots / Path(src).name).read_bytes()).decode()
            src = f"data:image/png;base64,{data}"
        # data-loaded / data-broken let a browser test (or a curious user) see which plots decoded.
        return (f'<img src="{html.escape(src, quote=True)}" alt="{alt}" '
                f'onload="this.dataset.loaded=1" onerror="this.dataset.broken=1">')

    parser.add_render_rule("image", image)
    return parser


def render_report_html(run_dir: Path) -> str:
    """The HTML page for the run whose artifacts are in `run_dir` (which must hold `report.md`)."""
    markdown = (run_dir / "report.md").read_text()
    body = _markdown(run_dir).render(markdown)
    first = markdown.splitlines()[0] if markdown else "SCoRe run"
    title = html.escape(first.lstrip("# ").strip() or "SCoRe run")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_STYLE}</style></head>\n<body>\n{body}</body></html>\n")
