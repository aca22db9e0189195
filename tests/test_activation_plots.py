"""Activation-counting figures: frequencies on one shared colour scale across conditions."""

from __future__ import annotations

import numpy as np
import pytest

from workflow_scripts.figures import activations as plots


def test_frequencies_divide_by_recorded_positions():
    counts = {"en": np.array([[10, 0], [5, 20]]), "parallel": np.array([[4, 8], [0, 2]])}
    freq = plots.frequencies(counts, {"en": 20, "parallel": 8})
    np.testing.assert_allclose(freq["en"], [[0.5, 0.0], [0.25, 1.0]])
    np.testing.assert_allclose(freq["parallel"], [[0.5, 1.0], [0.0, 0.25]])


@pytest.fixture
def captured(monkeypatch):
    """The figures the plot functions would save, kept open for inspection."""
    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, out: figures.append(fig))
    yield figures
    for fig in figures:
        plots.plt.close(fig)


def test_heatmap_panels_share_one_frequency_scale(captured, tmp_path):
    rng = np.random.default_rng(0)
    # conditions of very different length: raw counts differ 20x, frequencies do not
    counts = {"en": rng.integers(0, 1500, (6, 32)), "parallel": rng.integers(0, 80, (6, 32))}
    n_positions = {"en": 1500, "parallel": 80}
    plots.heatmap(counts, n_positions, "tiny", tmp_path / "h.png")
    (fig,) = captured
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 2
    assert {im.get_clim() for im in images} == {(0.0, 1.0)}
    for im, cond in zip(images, counts, strict=True):
        np.testing.assert_allclose(im.get_array(), counts[cond] / n_positions[cond])
    colorbars = [ax for ax in fig.axes if "frequency" in ax.get_ylabel()]
    assert len(colorbars) == 1, "one colour bar for every panel"


def test_peaks_plot_frequency_by_rank(captured, tmp_path):
    counts = {"en": np.array([[100, 50], [25, 0]]), "fr": np.array([[10, 5], [0, 0]])}
    plots.peaks(counts, {"en": 100, "fr": 10}, 0.5, "tiny", tmp_path / "p.png")
    (fig,) = captured
    left = fig.axes[0]
    lines = {line.get_label(): line.get_ydata() for line in left.get_lines()}
    np.testing.assert_allclose(lines[plots.condition_label("en")], [1.0, 0.5])
    np.testing.assert_allclose(lines[plots.condition_label("fr")], [1.0, 0.5])
    assert "frequency" in left.get_ylabel()
