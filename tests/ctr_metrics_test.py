"""Tests of trainers/ctr/metrics.py against brute-force pairwise counts and the formula."""

import numpy as np
import pytest

from tests import pytest_main
from trainers.ctr import metrics


def _pairwise_auc(labels, scores):
  pos = scores[labels == 1][:, None]
  neg = scores[labels == 0][None, :]
  return ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)


def test_known_value_with_ties():
  labels = np.array([0, 0, 1, 1, 0, 1])
  scores = np.array([0.1, 0.4, 0.4, 0.8, 0.8, 0.3])
  # Positives 0.4, 0.8, 0.3 vs negatives 0.1, 0.4, 0.8: wins 1+0.5+0 + 1+1+0.5 + 1+0+0 = 5.
  assert metrics.auc(labels, scores) == pytest.approx(5 / 9)
  assert metrics.auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores))


@pytest.mark.parametrize("seed", range(5))
def test_matches_pairwise_count_on_random_tied_scores(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 500)
  scores = rng.integers(0, 20, 500).astype(np.float32)  # many ties
  assert metrics.auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)


def test_perfect_reversed_and_constant_scores():
  labels = np.array([0, 1, 0, 1, 1, 0])
  assert metrics.auc(labels, labels * 2.0 + 1) == 1.0
  assert metrics.auc(labels, -labels) == 0.0
  assert metrics.auc(labels, np.zeros(6)) == 0.5
  assert metrics.auc(labels.astype(bool), labels) == 1.0


def test_invariant_to_monotone_transforms():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 300)
  scores = rng.normal(size=300) + labels
  assert metrics.auc(labels, scores) == pytest.approx(metrics.auc(labels, np.exp(3 * scores)))


@pytest.mark.parametrize("labels, scores, message", [
    ([1, 1], [0.1, 0.2], "both classes"),
    ([0, 0], [0.1, 0.2], "both classes"),
    ([0, 2], [0.1, 0.2], "0 or 1"),
    ([0, 1], [0.1], "2 labels but 1 scores"),
    ([0, 1], [0.1, np.nan], "NaN"),
])
def test_auc_bad_input(labels, scores, message):
  with pytest.raises(ValueError, match=message):
    metrics.auc(labels, scores)


def test_log_loss_matches_formula():
  labels = np.array([1, 0, 1, 0])
  p = np.array([0.9, 0.2, 0.3, 0.6])
  expected = -(np.log(0.9) + np.log(0.8) + np.log(0.3) + np.log(0.4)) / 4
  assert metrics.log_loss(labels, p) == pytest.approx(expected, rel=1e-12)
  assert metrics.log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))


def test_log_loss_clips_certain_mistakes():
  loss = metrics.log_loss([1, 0], [0.0, 1.0])
  assert np.isfinite(loss)
  assert loss == pytest.approx(-np.log(1e-7), rel=1e-6)


if __name__ == "__main__":
  pytest_main.main(__file__)
