"""Exact click-through-rate metrics in numpy: ROC AUC and log loss.

Evaluation sets of a CTR trainer fit in memory, so exact (not streaming or bucketed) values
are affordable and make the numbers comparable with the planted model's AUC of
`generated_clicks.py`.
"""

import numpy as np


def _average_ranks(values):
  """1-based ranks of `values`; tied values share the mean of the ranks they span."""
  order = np.argsort(values, kind="mergesort")
  sorted_values = values[order]
  # Start index of each run of equal values, and each run's end (exclusive).
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], len(values)]
  run_ranks = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
  ranks = np.empty(len(values), np.float64)
  ranks[order] = np.repeat(run_ranks, ends - starts)
  return ranks


def auc(labels, scores):
  """Exact ROC AUC: P(score of a positive > score of a negative) + 0.5 P(tie).

  Computed from average ranks (the Mann-Whitney U statistic), O(n log n). Labels are 0/1 (or
  booleans); ValueError if either class is absent, where AUC is undefined.
  """
  labels = np.asarray(labels).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if labels.shape != scores.shape:
    raise ValueError(f"auc: {labels.size} labels but {scores.size} scores.")
  if np.isnan(scores).any():
    raise ValueError("auc: scores contain NaN.")
  positive = labels.astype(bool)
  if not np.array_equal(labels, positive.astype(labels.dtype)):
    raise ValueError("auc: labels must be 0 or 1.")
  num_pos = int(positive.sum())
  num_neg = labels.size - num_pos
  if num_pos == 0 or num_neg == 0:
    raise ValueError(f"auc: undefined with {num_pos} positive and {num_neg} negative "
                     "labels; both classes are needed.")
  rank_sum = _average_ranks(scores)[positive].sum()
  return float((rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def log_loss(labels, probabilities, epsilon=1e-7):
  """Mean binary cross-entropy; probabilities are clipped to [epsilon, 1 - epsilon].

  The clipping keeps one confident mistake from making the mean infinite.
  """
  labels = np.asarray(labels, np.float64).reshape(-1)
  p = np.clip(np.asarray(probabilities, np.float64).reshape(-1), epsilon, 1.0 - epsilon)
  if labels.shape != p.shape:
    raise ValueError(f"log_loss: {labels.size} labels but {p.size} probabilities.")
  if labels.size == 0:
    raise ValueError("log_loss: no examples.")
  return float(-np.mean(labels * np.log(p) + (1.0 - labels) * np.log1p(-p)))
