"""Tests for bmqa_jax.metrics against scipy.stats and hand-checked logistic fits."""

import json
import math

import numpy as np
import pytest
import scipy.stats

from bmqa_jax import metrics as M
from bmqa_jax import metrics_report as R


@pytest.fixture
def data():
  rng = np.random.default_rng(0)
  mos = rng.uniform(0, 1, 60)
  pred = mos * 40 + rng.normal(0, 6, 60) + 10
  return pred, mos


def test_correlations_match_scipy(data):
  pred, mos = data
  assert M.plcc(pred, mos) == pytest.approx(scipy.stats.pearsonr(pred, mos).statistic, abs=1e-12)
  assert M.srcc(pred, mos) == pytest.approx(scipy.stats.spearmanr(pred, mos).statistic, abs=1e-12)
  assert M.krcc(pred, mos) == pytest.approx(scipy.stats.kendalltau(pred, mos).statistic, abs=1e-12)
  assert M.rmse(pred, mos) == pytest.approx(math.sqrt(np.mean((pred - mos) ** 2)), rel=1e-12)
  for f in (M.plcc, M.srcc, M.krcc, M.rmse):
    assert isinstance(f(pred, mos), float)


def test_ties_match_scipy():
  pred = np.array([1, 2, 2, 3, 3, 3, 4, 5], float)
  mos = np.array([0.1, 0.3, 0.2, 0.5, 0.5, 0.4, 0.9, 0.8])
  assert M.srcc(pred, mos) == pytest.approx(scipy.stats.spearmanr(pred, mos).statistic, abs=1e-12)
  assert M.krcc(pred, mos) == pytest.approx(scipy.stats.kendalltau(pred, mos).statistic, abs=1e-12)


def test_hand_computed_values():
  # pred = [1,2,3], mos = [1,3,2]: r = 0.5, rho = 0.5, tau = 1/3, rmse = sqrt(2/3).
  assert M.plcc([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
  assert M.srcc([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
  assert M.krcc([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
  assert M.rmse([1, 2, 3], [1, 3, 2]) == pytest.approx(math.sqrt(2 / 3))


@pytest.mark.parametrize(
  "bad,match",
  [
    (([1, 2, 3], [1, 2]), "3 values but mos has 2"),
    (([1, 2], [1, 2]), "at least 3"),
    (([1, np.nan, 3], [1, 2, 3]), "non-finite"),
    (([1, 2, np.inf], [1, 2, 3]), "non-finite"),
    (([[1, 2], [3, 4]], [1, 2, 3, 4]), "1-D"),
    ((["a", "b", "c"], [1, 2, 3]), "float"),
  ],
)
def test_bad_input(bad, match):
  with pytest.raises(ValueError, match=match):
    M.plcc(*bad)


def test_constant_raises_not_nan():
  for f in (M.plcc, M.srcc, M.krcc, M.summary):
    with pytest.raises(ValueError, match="constant"):
      f(np.ones(10), np.linspace(0, 1, 10))
  with pytest.raises(M.LogisticFitError, match="constant"):
    M.fit_logistic(np.full(10, 0.3), np.linspace(0, 1, 10))
  with pytest.raises(ValueError, match="constant"):
    M.plcc(np.full(10, 0.3), np.linspace(0, 1, 10), mapping="logistic4")


def test_logistic4_recovers_known_parameters():
  x = np.linspace(0, 100, 80)
  true = (0.9, 0.1, 40.0, 8.0)
  y = M.logistic4(x, *true)
  # Hand check of the formula at three points: f(b3) = (b1 + b2)/2, tails -> b1, b2.
  assert M.logistic4(40.0, *true) == pytest.approx(0.5)
  assert M.logistic4(40.0 + 8.0, *true) == pytest.approx(0.1 + 0.8 / (1 + math.exp(-1)))
  assert M.logistic4(1e6, *true) == pytest.approx(0.9)
  fit = M.fit_logistic(x, y, "4")
  assert fit.converged and fit.monotonic
  np.testing.assert_allclose(fit.params[:3], true[:3], rtol=1e-6)
  assert abs(fit.params[3]) == pytest.approx(8.0, rel=1e-6)
  assert fit.start == pytest.approx((y.max(), y.min(), x.mean(), x.std() / 4))
  assert M.plcc(x, y, mapping="logistic4") == pytest.approx(1.0, abs=1e-9)
  assert M.rmse(x, y, mapping="logistic4") == pytest.approx(0.0, abs=1e-7)
  assert M.plcc(x, y) < 0.99  # the raw relation is not linear


def test_logistic5_recovers_known_parameters():
  x = np.linspace(0, 100, 80)
  true = (0.8, 0.1, 50.0, 0.002, 0.3)
  # Hand check: at x = b3 the logistic term vanishes, f = b4 b3 + b5.
  assert M.logistic5(50.0, *true) == pytest.approx(0.002 * 50 + 0.3)
  y = M.logistic5(x, *true)
  fit = M.fit_logistic(x, y, "5")
  assert fit.converged
  assert fit.start == pytest.approx((10.0, 0.0, x.mean(), 0.1, 0.1))
  np.testing.assert_allclose(fit.params, true, rtol=1e-5, atol=1e-8)
  assert M.rmse(x, y, mapping="logistic5") == pytest.approx(0.0, abs=1e-7)


def test_logistic_decreasing_prediction(data):
  pred, mos = data
  # A "lower is better" score (e.g. BRISQUE) maps with a decreasing logistic.
  up = M.plcc(pred, mos, mapping="logistic4")
  down = M.plcc(-pred, mos, mapping="logistic4")
  assert up > 0.8 and down == pytest.approx(up, abs=1e-4)


def test_nonconvergence_is_reported():
  x = np.linspace(0, 1, 30)
  y = M.logistic4(x, 0.9, 0.1, 0.5, 0.1) + np.random.default_rng(1).normal(0, 0.05, 30)
  fit = M.fit_logistic(x, y, "4", maxfev=3)
  assert not fit.converged and fit.message
  with pytest.raises(M.LogisticFitError, match="did not converge"):
    fit(x)


def test_summary_raw_and_mapped(data):
  pred, mos = data
  s = M.summary(pred, mos, mapping=["logistic4", "logistic5"])
  assert s["n"] == 60
  assert s["plcc"] == pytest.approx(M.plcc(pred, mos))
  assert s["srcc"] == pytest.approx(M.srcc(pred, mos))
  assert s["krcc"] == pytest.approx(M.krcc(pred, mos))
  assert s["rmse"] == pytest.approx(M.rmse(pred, mos))
  assert s["plcc_logistic4"] == pytest.approx(M.plcc(pred, mos, mapping="logistic4"))
  assert s["rmse_logistic5"] == pytest.approx(M.rmse(pred, mos, mapping="logistic5"))
  assert s["logistic4_fit"]["converged"]
  # The mapped RMSE is on the MOS scale, the raw one is not.
  assert s["rmse_logistic4"] < 0.2 < s["rmse"]
  json.dumps(s)  # serialisable for eval/metrics.json
  assert set(M.summary(pred, mos)) == {"plcc", "srcc", "krcc", "rmse", "n"}
  with pytest.raises(ValueError, match="mapping"):
    M.summary(pred, mos, mapping="logistic3")


def test_grouped_summary(data):
  pred, mos = data
  groups = ["a"] * 30 + ["b"] * 28 + ["c"] * 2
  out = M.grouped_summary(pred, mos, groups)
  assert out["overall"]["n"] == 60
  assert out["per_group"]["a"]["srcc"] == pytest.approx(M.srcc(pred[:30], mos[:30]))
  assert out["per_group"]["b"]["n"] == 28
  assert out["per_group"]["c"]["n"] == 2
  assert "at least 3" in out["per_group"]["c"]["error"]
  with pytest.raises(ValueError, match="groups"):
    M.grouped_summary(pred, mos, groups[:-1])


def test_split_statistics():
  results = [
    {"plcc": v, "srcc": v - 0.1, "n": 10, "plcc_logistic4": (None if i == 2 else v)}
    for i, v in enumerate([0.8, 0.9, 0.7, 0.6])
  ]
  st = R.split_statistics(results)
  assert st["plcc"]["mean"] == pytest.approx(0.75)
  assert st["plcc"]["std"] == pytest.approx(np.std([0.8, 0.9, 0.7, 0.6], ddof=1))
  assert st["plcc"]["median"] == pytest.approx(0.75)
  assert st["srcc"]["mean"] == pytest.approx(0.65)
  assert st["plcc_logistic4"]["n_splits"] == 3 and st["plcc_logistic4"]["n_failed"] == 1
  assert st["plcc_logistic4"]["median"] == pytest.approx(0.8)
  assert R.split_statistics(results[:1])["plcc"]["std"] is None
  with pytest.raises(ValueError, match="no per-split"):
    R.split_statistics([])


def test_format_table(data):
  pred, mos = data
  s = M.summary(pred, mos, mapping="logistic4")
  bad = dict(s, plcc_logistic4=None)
  table = R.format_table([("model_a", s), ("model_b", bad), ("tiny", {"n": 2, "error": "too few"})])
  lines = table.splitlines()
  assert "PLCC L4" in lines[0] and "PLCC L5" not in lines[0]
  assert f"{s['srcc']:.4f}" in lines[2] and f"{s['plcc_logistic4']:.4f}" in lines[2]
  assert "n/c" in lines[3] and "too few" in lines[4]
