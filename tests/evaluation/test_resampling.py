"""Bootstrap draws over patients, and the one rule for statistics that some draws leave undefined."""

import numpy as np

from radlab.evaluation.resampling import bootstrap, statistic_interval


def test_a_statistic_undefined_on_a_few_draws_keeps_its_interval_and_on_many_has_none():
    """A statistic that needs one of the reports `needed` in a draw (as an AUROC needs a positive
    case): left out of the draws that miss them all, under one in twenty; no interval above it."""
    values = np.random.default_rng(0).normal(0, 1, 100)

    def mean_needing(needed):
        return lambda rows: values[rows].mean() if np.isin(rows, needed).any() else float("nan")

    low, high = statistic_interval(mean_needing(np.arange(5)), 100, 500)  # all five missed in ~0.6% of draws
    everywhere = bootstrap(values, resamples=500)
    assert low < values.mean() < high
    assert abs(low - everywhere.low) < 0.05 and abs(high - everywhere.high) < 0.05
    assert np.isnan(statistic_interval(mean_needing([0]), 100, 500)).all()  # report 0 missed in ~37%
    assert statistic_interval(lambda rows: values[rows].mean(), 100, 500) == (everywhere.low, everywhere.high)
