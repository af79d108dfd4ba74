"""report.md: the whole report as one Markdown file (tables inline, figures and grids as image links)."""

from __future__ import annotations

from bench.report.content import Report, Section
from bench.report.tables import to_markdown

__all__ = ["render_markdown"]


def _section(section: Section) -> list[str]:
    links = " · ".join(f"[{fmt}]({path.as_posix()})" for fmt, path in section.files.items())
    tables = [f"#### {part.caption}\n\n{to_markdown(part)}" for part in section.parts] or [to_markdown(section.table)]
    return [f"### {section.table.caption}", "", *tables, f"Files: {links}", ""]


def render_markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    lines += [f"- store: `{report.store}`"] + [f"- {key}: {value}" for key, value in report.facts.items()]
    lines += [f"- generated: {report.generated}", ""]
    lines += ["## Quality", ""]
    for section in report.quality:
        lines += _section(section)
    if report.checks is not None:
        lines += _section(report.checks)
    if report.runtime is not None:
        lines += ["## Runtime", ""] + _section(report.runtime)
    lines += ["## Figures", ""]
    for figure in report.figures:
        lines += [f"### {figure.title}", "", f"![{figure.title}]({figure.path.as_posix()})", "", figure.caption, ""]
    lines += [f"- {note}" for note in report.notes]
    lines += ["", "## Image grids", ""]
    for grid in report.grids:
        lines += [f"### {grid.title}", "", f"![{grid.title}]({grid.path.as_posix()})", ""]
    lines += ["## Missing and failed", ""]
    if not report.missing:
        lines += ["Every (solver, task, σ) combination in the store is complete.", ""]
    for table in report.missing:
        lines += [f"### {table.caption}", "", to_markdown(table)]
    lines += ["## Versions", "", to_markdown(report.versions)]
    if report.weights is not None:
        lines += [f"### {report.weights.caption}", "", to_markdown(report.weights)]
    return "\n".join(lines).rstrip() + "\n"
