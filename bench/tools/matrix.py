"""Which solver runs on which task: a table generated from the declared capabilities, never by hand."""

from __future__ import annotations

README_BEGIN = "<!-- support-matrix:begin -->"
README_END = "<!-- support-matrix:end -->"


# The embedded default's image shape: the matrix shows what runs there.
SHAPE = (3, 64, 64)


def support_matrix() -> str:
    """A Markdown table: rows = solvers, columns = tasks; ✓ runs at every σ, ✓⁰ only at σ = 0, – never, and n/a
    where the operator (a plug-in's, say) cannot be built at SHAPE, with the reason below the table."""
    import operators
    import solvers

    tasks = operators.available()
    ops, unbuildable = {}, {}
    for task in tasks:
        try:
            ops[task] = operators.build(task, shape=SHAPE)
        except Exception as error:  # noqa: BLE001 - any operator's refusal is reported, not raised
            unbuildable[task] = f"{type(error).__name__}: {error}"
    lines = ["| solver | " + " | ".join(tasks) + " |", "| --- |" + " :-: |" * len(tasks)]
    for name in solvers.available():
        solver = solvers.build(name)
        cells = []
        for task in tasks:
            if task in unbuildable:
                cells.append("n/a")
                continue
            op = ops[task]
            clean, noisy = solver.unsupported(op, 0.0) is None, solver.unsupported(op, 0.05) is None
            cells.append("✓" if clean and noisy else "✓⁰" if clean else "–")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    shape = "×".join(map(str, SHAPE))
    lines += [f"\nn/a: `{task}` cannot be built at {shape} ({reason})" for task, reason in unbuildable.items()]
    return "\n".join(lines)


def readme_block() -> str:
    return f"{README_BEGIN}\n{support_matrix()}\n{README_END}"
