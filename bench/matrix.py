"""Which solver runs on which task: a table generated from the declared capabilities, never by hand."""

from __future__ import annotations

README_BEGIN = "<!-- support-matrix:begin -->"
README_END = "<!-- support-matrix:end -->"


def support_matrix() -> str:
    """A Markdown table: rows = solvers, columns = tasks; ✓ runs at every σ, ✓⁰ only at σ = 0, – never."""
    import operators
    import solvers

    tasks = operators.available()
    lines = ["| solver | " + " | ".join(tasks) + " |", "| --- |" + " :-: |" * len(tasks)]
    for name in solvers.available():
        solver = solvers.build(name)
        cells = []
        for task in tasks:
            op = operators.build(task, shape=(3, 64, 64))
            clean, noisy = solver.unsupported(op, 0.0) is None, solver.unsupported(op, 0.05) is None
            cells.append("✓" if clean and noisy else "✓⁰" if clean else "–")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_block() -> str:
    return f"{README_BEGIN}\n{support_matrix()}\n{README_END}"
