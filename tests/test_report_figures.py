"""The report's figure helpers: label placement without collisions, and the kurtosis figure's reading."""

from __future__ import annotations

import itertools
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
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


# ----- the kurtosis figure's drawing: sparse methods, the data reference, no empty panels --------------------


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures the figure functions save, kept for inspection (closing only unregisters them)."""
    figs = []
    save = figures._save

    def keep(fig, path):
        figs.append(fig)
        save(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    return figs


DENSE_T = list(range(990, -1, -10))  # 100 timesteps, as DPS at 100 steps
SPARSE_T = [800, 600, 400, 200, 0]  # DDC's 5 steps


def _curves(curves: dict[tuple[str, str], tuple[list[int], float]], sigma: float = 0.05) -> pd.DataFrame:
    """Stats rows: (method, task) -> (timesteps, level); the mean rises to `level` at t = 0."""
    rows = []
    for (method, task), (ts, level) in curves.items():
        for t in ts:
            rows.append(
                {
                    "method": method,
                    "solver": method.split()[0],
                    "task": task,
                    "sigma": sigma,
                    "t": t,
                    "mean": level * (1 - t / 1000),
                    "std": 0.1,
                }
            )
    return pd.DataFrame(rows)


def _data_reference(level: float = 0.5) -> pd.DataFrame:
    ts = sorted({*range(999, -1, -53), 30, 20, 10, 5, 2, 1, 0}, reverse=True)
    return pd.DataFrame(
        [{"method": figures.DATA_REFERENCE, "t": t, "mean": level * (1 - t / 1000), "std": 0.05} for t in ts]
    )


def _visible(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _assert_no_empty_axes(fig):
    for ax in _visible(fig):
        drawn_data = [line for line in ax.get_lines() if len(line.get_xdata()) > 0 and line.get_label() != "_nolegend_"]
        drawn_data += [c for c in ax.collections if len(c.get_offsets()) or c.get_paths()]
        # an axhline is a line too; a panel with nothing but it would still be empty
        real = [a for a in drawn_data if not (hasattr(a, "get_xdata") and list(a.get_xdata()) == [0, 1])]
        assert real, f"empty panel: {ax.get_title()!r}"


def _by_label(ax, label):
    lines = [line for line in ax.get_lines() if line.get_label() == label]
    containers = [c for c in ax.containers if c.get_label() == label]
    return lines, containers


def test_sparse_methods_are_markers_at_their_timesteps_and_dense_ones_lines(tmp_path, drawn):
    stats = _curves({("dps", "sr4"): (DENSE_T, 1.0), ("ddc", "sr4"): (SPARSE_T, 2.0)})
    colors = figures.method_colors(["dps", "ddc"])
    made = figures.kurtosis_figure(stats, _data_reference(), 0.05, colors, tmp_path / "k.png")
    assert made is not None and "(ddc at 5)" in made.caption and "no measurement" in made.caption
    fig = drawn[-1]
    top, bottom = _visible(fig)
    for ax in (top, bottom):
        lines, containers = _by_label(ax, "ddc")
        assert not lines and len(containers) == 1  # no continuous labelled line for the sparse method
        markers = containers[0].lines[0]
        assert markers.get_linestyle() == "None" and markers.get_marker() == "o"
        assert sorted(markers.get_xdata()) == sorted(SPARSE_T)  # markers only where it was evaluated
        ddc_color = matplotlib.colors.to_rgba(colors["ddc"])
        connectors = [  # the thin line joining its markers (error-bar caps are lines without a style)
            line
            for line in ax.get_lines()
            if line.get_linestyle() != "None" and matplotlib.colors.to_rgba(line.get_color()) == ddc_color
        ]
        assert connectors and all(c.get_linestyle() == ":" and c.get_linewidth() < 1 for c in connectors)
        fills = [
            c
            for c in ax.collections
            if isinstance(c, matplotlib.collections.PolyCollection)
            and np.allclose(c.get_facecolor()[0][:3], ddc_color[:3])
        ]
        assert not fills  # its spread is error bars at the measured points, not a band
    assert _by_label(top, "ddc")[1][0].has_yerr  # the upper panel's ±1 std, at its five timesteps
    dps_lines, dps_containers = _by_label(top, "dps")
    assert len(dps_lines) == 1 and dps_lines[0].get_linestyle() == "-" and not dps_containers
    assert any(isinstance(c, matplotlib.collections.PolyCollection) for c in top.collections)  # dps's band
    _assert_no_empty_axes(fig)


def test_the_data_reference_is_drawn_and_the_lower_panels_subtract_it(tmp_path, drawn):
    stats = _curves({("ddc", "sr4"): (SPARSE_T, 2.0), ("ddc", "inpaint"): (SPARSE_T, 1.0)})
    pooled = _data_reference(level=0.5)
    made = figures.kurtosis_figure(stats, pooled, 0.05, figures.method_colors(["ddc"]), tmp_path / "k.png")
    assert "forward-noised exactly" in made.caption and "perfect posterior sampler" in made.caption
    assert "minus the reference" in made.caption
    fig = drawn[-1]
    axes = _visible(fig)
    assert len(axes) == 4  # sr4 and inpaint, each with its lower panel
    sr4_bottom = next(ax for ax in axes if ax.get_title() == "sr4: minus the reference")
    markers = _by_label(sr4_bottom, "ddc")[1][0].lines[0]
    t = np.asarray(markers.get_xdata(), float)
    expected = 2.0 * (1 - t / 1000) - np.interp(t, pooled["t"][::-1], pooled["mean"][::-1])
    assert np.allclose(markers.get_ydata(), expected)
    sr4_top = next(ax for ax in axes if ax.get_title() == "sr4")
    reference = _by_label(sr4_top, figures.DATA_REFERENCE)[1]
    assert reference and reference[0].lines[0].get_marker() == "D"
    _assert_no_empty_axes(fig)


def test_without_any_reference_there_is_no_lower_row_and_the_caption_says_so(tmp_path, drawn):
    stats = _curves(
        {("dps", "sr4"): (DENSE_T, 1.0), ("ddc", "sr4"): (SPARSE_T, 2.0), ("ddc", "gblur"): (SPARSE_T, 1.0)}
    )
    empty = pd.DataFrame(columns=["method", "t", "mean", "std"])
    made = figures.kurtosis_figure(stats, empty, 0.05, figures.method_colors(["dps", "ddc"]), tmp_path / "k.png")
    fig = drawn[-1]
    titles = [ax.get_title() for ax in _visible(fig)]
    assert titles == ["sr4", "gblur"] and not any("reference" in title for title in titles)
    assert fig.axes[0].get_subplotspec().get_gridspec().nrows == 1
    assert made.caption.count("No reference") == 1 and "no panels of differences" in made.caption
    _assert_no_empty_axes(fig)


# ----- realness against consistency ----------------------------------------------------------------------


def _summary(values: dict[str, tuple[float, float]], task: str = "sr4", fid_n: int = 3) -> pd.DataFrame:
    rows = []
    for method, (ssim, fid) in values.items():
        common = {"method": method, "task": task, "sigma": 0.05, "state": "complete", "half_width": math.nan}
        rows.append({**common, "metric": "ssim", "mean": ssim, "n": 3})
        rows.append({**common, "metric": "fid", "mean": fid, "n": fid_n})
    return pd.DataFrame(rows)


def _units(consistency: dict[str, float], task: str = "sr4") -> pd.DataFrame:
    return pd.DataFrame(
        [{"method": m, "task": task, "sigma": 0.05, "status": "ok", "consistency": c} for m, c in consistency.items()]
    )


# (late |kurtosis| level, SSIM): the paper's reading holds in the first, is reversed in the second
READING = {"dps": (0.2, 0.60), "ddnm": (2.0, 0.80), "ddc": (0.5, 0.75)}
REVERSED = {"dps": (2.0, 0.80), "ddnm": (0.2, 0.60), "ddc": (3.0, 0.50)}


@pytest.mark.parametrize("values,verdict", [(READING, "this store agrees:"), (REVERSED, "this store does not agree:")])
def test_realness_caption_says_whether_the_papers_reading_holds(tmp_path, drawn, values, verdict):
    methods = list(values)
    # flat curves at the level over the last steps, so the late mean |kurtosis| is the level itself
    stats = pd.DataFrame(
        [
            {"method": m, "solver": m, "task": "sr4", "sigma": 0.05, "t": t, "mean": level, "std": 0.0}
            for m, (level, _) in values.items()
            for t in (500, 100, 50, 0)
        ]
    )
    summary = _summary({m: (ssim, 30.0) for m, (_, ssim) in values.items()})
    made = figures.realness_figure(
        stats,
        _data_reference(),
        summary,
        _units(dict.fromkeys(methods, 0.1)),
        0.05,
        figures.method_colors(methods),
        tmp_path / "r.png",
    )
    assert made is not None and "t ≤ 100" in made.caption
    assert "DPS keeps ε̂ near-Gaussian but loses SSIM" in made.caption and "DDC balances" in made.caption
    assert f"on sr4 {verdict}" in made.caption
    dps, ddnm = values["dps"], values["ddnm"]
    holds = "yes" if dps[0] < ddnm[0] else "no"
    assert (
        f"DPS closer to Gaussian than DDNM (|excess kurtosis| {dps[0]:.3g} vs {ddnm[0]:.3g}): {holds}" in made.caption
    )
    assert "none here: the largest set has 3 images" in made.caption  # FID of 3 images is not shown
    fig = drawn[-1]
    axes = _visible(fig)
    assert [ax.get_title() for ax in axes] == ["sr4", "sr4: consistency"]
    for ax in axes:  # one point per method, placed at its late |kurtosis|
        xs = sorted(float(c.get_offsets()[0][0]) for c in ax.collections if len(c.get_offsets()))
        assert xs == pytest.approx(sorted(level for level, _ in values.values()))
    _assert_no_empty_axes(fig)


def test_realness_annotates_fid_of_large_sets_and_says_when_nothing_can_be_checked(tmp_path, drawn):
    stats = _curves({("dps", "sr4"): (DENSE_T, 1.0), ("pigdm", "sr4"): (DENSE_T, 2.0)})
    summary = _summary({"dps": (0.6, 41.25), "pigdm": (0.7, 38.0)}, fid_n=100)
    made = figures.realness_figure(
        stats,
        pd.DataFrame(columns=["method", "t", "mean", "std"]),
        summary,
        _units({"dps": 0.1, "pigdm": 0.2}),
        0.05,
        figures.method_colors(["dps", "pigdm"]),
        tmp_path / "r.png",
    )
    assert "cannot be checked here" in made.caption and "the store has dps" in made.caption
    texts = [t.get_text() for ax in drawn[-1].axes for t in ax.texts]
    assert "dps · FID 41.2" in texts and "pigdm · FID 38" in texts
    _assert_no_empty_axes(drawn[-1])
