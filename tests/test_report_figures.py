"""The report's figure helpers: label placement without collisions, and the kurtosis figure's reading."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from bench.report import figures  # noqa: E402


def _boxes(fig, annotations):
    """The labels' text extents (an annotation's own extent also covers its leader line)."""
    fig.canvas.draw()  # an annotation's text is positioned when drawn
    renderer = fig.canvas.get_renderer()
    return [matplotlib.text.Text.get_window_extent(a, renderer) for a in annotations]


def test_scatter_labels_do_not_overlap_where_points_crowd():
    """Five methods within a few pixels of each other (as ddnm, reddiff and pigdm were) get disjoint labels;
    the naive fixed offset overlaps them."""
    fig, ax = plt.subplots(figsize=(3, 2.2))
    xs = [1.0, 1.02, 1.05, 1.03, 10.0]
    ys = [0.30, 0.301, 0.299, 0.305, 0.5]
    labels = ["ddnm", "reddiff", "pigdm", "ddrm (steps=50)", "dps"]
    ax.scatter(xs, ys)
    ax.set_xscale("log")
    placed = figures.place_labels(ax, xs, ys, labels)
    boxes = _boxes(fig, placed)
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    naive = [
        ax.annotate(t, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        for t, x, y in zip(labels, xs, ys, strict=True)
    ]
    assert any(a.overlaps(b) for a, b in itertools.combinations(_boxes(fig, naive), 2))
    plt.close(fig)


def _stats(values: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = []
    for (solver, task), curve in values.items():
        for t, mean in zip((500, 100, 50, 10, 0), curve, strict=True):
            rows.append({"method": solver, "solver": solver, "task": task, "sigma": 0.05, "t": t, "mean": mean})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("dps_level,expected", [(0.1, "reproduces here"), (2.0, "does not reproduce here")])
def test_kurtosis_ordering_states_whether_the_papers_reading_holds(dps_level, expected):
    at = _stats({("dps", "sr4"): [0.0, dps_level, dps_level, dps_level, dps_level], ("ddnm", "sr4"): [0, 1, 1, 1, 1]})
    sentence = figures.kurtosis_ordering(at)
    assert f"on sr4 it {expected}" in sentence
    assert f"{dps_level:.3g} for DPS and 1 for DDNM" in sentence


def test_kurtosis_ordering_says_when_it_cannot_be_checked():
    assert "cannot be checked" in figures.kurtosis_ordering(_stats({("dps", "gblur"): [0, 1, 1, 1, 1]}))


def test_kurtosis_figure_draws_the_difference_from_the_reference(tmp_path):
    stats = _stats({("dps", "sr4"): [0.0, 0.5, 1.0, 2.0, 3.0], ("uncond", "sr4"): [0.0, 0.1, 0.2, 0.3, 0.4]})
    stats["std"] = 0.0
    stats, pooled = (
        stats[stats["method"] != "uncond"],
        stats[stats["method"] == "uncond"][["method", "t", "mean", "std"]],
    )
    colors = figures.method_colors(["dps", "uncond"])
    made = figures.kurtosis_figure(stats, pooled, 0.05, colors, tmp_path / "k.png")
    assert made is not None and (tmp_path / "k.png").stat().st_size > 0
    assert "minus the reference" in made.caption and "symmetric-log" in made.caption
    assert "cannot be checked" in made.caption  # no DDNM in this store
