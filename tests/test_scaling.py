"""The scaling-law fitter against the fixture's fits of the original data."""

from __future__ import annotations

import numpy as np
import pytest

from tests.golden import load_case
from visual_token_compression.tools.scaling import (
    ScalingLawFit,
    fit_scaling_law,
    paper_data,
    plot_fit,
    read_csv,
    scaling_law_cli,
)

FIXTURE = load_case("quecc", "scaling_law_fit").manifest


def test_data_matches_the_original_values():
    params_b, tokens, errors = paper_data()
    expected = FIXTURE["data"]
    assert sorted(set(params_b)) == expected["all_n_values"]
    assert sorted(set(tokens)) == expected["all_token_values"]
    for size, row in expected["errors"].items():
        np.testing.assert_allclose(errors[params_b == float(size)], row, atol=1e-12)


def test_fit_reproduces_the_bounded_least_squares_fit_within_one_percent():
    fit = fit_scaling_law(*paper_data())
    reference = FIXTURE["bounded_continuous_least_squares"]
    a, b, c, d = reference["params_a_b_c_d"]
    np.testing.assert_allclose([fit.a, fit.b, fit.c], [a, b, c], rtol=0.01)
    assert abs(fit.d - d) < 1e-3  # d sits on its lower bound 0
    np.testing.assert_allclose(fit.sse, reference["sse_recomputed"], rtol=0.01)
    np.testing.assert_allclose(fit.optimal_visual_tokens(50), reference["pareto_visual_tokens_Q50"], rtol=0.01)
    for size, row in reference["predicted_error"].items():
        np.testing.assert_allclose(
            fit.predict(float(size), np.array(FIXTURE["data"]["all_token_values"])), row, rtol=0.01
        )
    # Better than every grid-search result of the original, and deterministic.
    assert fit.sse < FIXTURE["full_grid_optimum"]["sse_recomputed"]
    assert fit == fit_scaling_law(*paper_data())


def test_optimal_visual_tokens_follows_the_closed_form():
    fit = ScalingLawFit(a=0.5, b=0.08, c=0.02, d=0.1, sse=0.0)
    assert fit.optimal_visual_tokens(50) == pytest.approx(50 * 0.02 / 0.06)
    assert fit.optimal_visual_tokens(0) == 1.0  # text cached: one visual token
    assert ScalingLawFit(a=0.5, b=0.01, c=0.02, d=0.1, sse=0.0).optimal_visual_tokens(50) == float("inf")
    # The closed form is the minimum of the predicted error along a fixed-compute curve.
    budget = 2e12
    tokens = np.linspace(1, 200, 20000)
    errors = fit.predict(budget / (2 * (50 + tokens)) / 1e9, tokens)
    assert tokens[np.argmin(errors)] == pytest.approx(fit.optimal_visual_tokens(50), abs=0.05)
    best_tokens, size, _ = fit.best_allocation(budget, 50, visual_tokens=(1, 4, 16, 64, 576))
    assert best_tokens == 16 and size == pytest.approx(budget / (2 * 66) / 1e9)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="positive"):
        fit_scaling_law([0.0, 1.0], [1, 4], [0.5, 0.4])
    with pytest.raises(ValueError, match="one length"):
        fit_scaling_law([1.0, 2.0], [1], [0.5, 0.4])


def test_cli_reads_csv_prints_and_plots(tmp_path, capsys):
    params_b, tokens, errors = paper_data()
    data = tmp_path / "points.csv"
    data.write_text(
        "params_b,visual_tokens,score\n"
        + "".join(f"{n},{v},{1 - e}\n" for n, v, e in zip(params_b, tokens, errors, strict=True))
    )
    np.testing.assert_allclose(read_csv(data)[2], errors)
    plot = tmp_path / "fit.png"
    assert scaling_law_cli(["--data", str(data), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "compute-optimal visual tokens at Q=50: 13.5" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.csv"
    bad.write_text("n,v\n1,2\n")
    with pytest.raises(ValueError, match="params_b"):
        read_csv(bad)
    plot_fit(fit_scaling_law(*paper_data()), tmp_path / "default.png")
    assert (tmp_path / "default.png").stat().st_size > 0
