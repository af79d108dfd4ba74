"""index.html: one self-contained page (inline CSS, no scripts, no network); images are files beside it."""

from __future__ import annotations

import html
from dataclasses import replace

from bench.report.content import Report, Section
from bench.report.figures import Figure
from bench.report.tables import to_html

__all__ = ["render_html"]

CSS = """
body { font-family: system-ui, "Segoe UI", "DejaVu Sans", Arial, sans-serif; margin: 2rem auto; max-width: 1320px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .3rem; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
nav a { margin-right: 1rem; } code { background: #f3f3f5; padding: 0 .25rem; border-radius: 3px; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .1rem 1rem; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: .82rem; font-variant-numeric: tabular-nums; margin: .4rem 0; }
caption { text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { padding: .22rem .5rem; text-align: right; white-space: nowrap; }
thead tr:first-child th { border-top: 2px solid #333; } thead tr:last-child th { border-bottom: 1px solid #333; }
tbody tr:last-child th, tbody tr:last-child td { border-bottom: 2px solid #333; }
th.group { text-align: center; border-bottom: 1px solid #999; } th.label { text-align: left; font-weight: normal; }
tbody tr:nth-child(even) { background: #fafafa; }
p.note { font-size: .8rem; color: #555; margin: .15rem 0; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #444; max-width: 60rem; }
.files a { margin-right: .6rem; font-size: .85rem; }
.tables { display: flex; flex-wrap: wrap; gap: 0 2.5rem; align-items: flex-start; }
.tables > div { width: min-content; max-width: 100%; } .flag { color: #b3261e; }
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _section(section: Section) -> str:
    links = "".join(f'<a href="{_e(path.as_posix())}">{_e(fmt)}</a>' for fmt, path in section.files.items())
    if not section.parts:
        return to_html(section.table) + f'<p class="files">Download: {links}</p>\n'
    # one table per task, side by side where the page is wide enough, each as wide as its table (its footnotes
    # wrap under it); the legend they share follows them
    tables = "".join(f"<div>{to_html(replace(part, legend=[]))}</div>" for part in section.parts)
    legend = "".join(f'<p class="note">{_e(text)}</p>\n' for part in section.parts for text in part.legend)
    return (
        f"<h3>{_e(section.table.caption)}</h3>\n"
        f'<div class="tables">{tables}</div>\n{legend}<p class="files">Download: {links}</p>\n'
    )


def _figure(figure: Figure) -> str:
    src = _e(figure.path.as_posix())
    return (
        f'<figure><h3>{_e(figure.title)}</h3><a href="{src}"><img src="{src}" alt="{_e(figure.title)}" '
        f'loading="lazy"></a><figcaption>{_e(figure.caption)}</figcaption></figure>\n'
    )


def render_html(report: Report) -> str:
    sections = [("quality", "Quality"), ("runtime", "Runtime"), ("figures", "Figures"), ("grids", "Image grids")]
    sections += [("missing", "Missing and failed"), ("versions", "Versions")]
    facts = {"store": f"<code>{_e(report.store)}</code>"}
    facts.update({key: _e(value) for key, value in report.facts.items()})
    facts["generated"] = _e(report.generated)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(report.title)}</h1>",
        '<dl class="facts">' + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in facts.items()) + "</dl>",
        "<nav>" + "".join(f'<a href="#{key}">{_e(name)}</a>' for key, name in sections) + "</nav>",
        '<section id="quality"><h2>Quality</h2>',
    ]
    parts += [_section(section) for section in report.quality]
    if report.checks is not None:
        parts.append(_section(report.checks))
    parts.append('</section><section id="runtime"><h2>Runtime</h2>')
    parts.append(_section(report.runtime) if report.runtime else "<p>No unit ran (all unsupported or failed).</p>")
    parts.append('</section><section id="figures"><h2>Figures</h2>')
    parts += [_figure(figure) for figure in report.figures]
    parts += [f'<p class="note">{_e(note)}</p>' for note in report.notes]
    parts.append('</section><section id="grids"><h2>Image grids</h2>')
    parts += [_figure(grid) for grid in report.grids] or ["<p>No image grid (see the notes above).</p>"]
    parts.append('</section><section id="missing"><h2>Missing and failed</h2>')
    parts += [to_html(table) for table in report.missing] or [
        "<p>Every (solver, task, σ) combination in the store is complete.</p>"
    ]
    parts.append('</section><section id="versions"><h2>Versions</h2>')
    parts.append(to_html(report.versions))
    if report.weights is not None:
        parts.append(to_html(report.weights))
    parts.append("</section></body></html>")
    return "\n".join(parts) + "\n"
