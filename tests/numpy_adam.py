"""A float64 NumPy implementation of the documented Adam formula: the tests' reference.

Written from the formula in the Keras documentation and Kingma & Ba (epsilon hat), with no
TensorFlow, so that it can disagree with adam_xla.
"""

import numpy as np


class NumpyAdam:
  """Adam on NumPy arrays. `step(params, grads)` updates params (a list) in place."""

  def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
               clipnorm=None, clipvalue=None, global_clipnorm=None, lazy=False, weight_decay=0.0):
    self.learning_rate = learning_rate  # a number, or a function of the step count
    self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
    self.amsgrad, self.lazy, self.weight_decay = amsgrad, lazy, weight_decay
    self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
    self.iterations = 0
    self.m = self.v = self.vhat = None

  def _clip(self, grads):
    if self.clipvalue is not None:
      grads = [np.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
    if self.clipnorm is not None:
      grads = [_clip_to_norm(g, _norm([g]), self.clipnorm) for g in grads]
    if self.global_clipnorm is not None:
      norm = _norm(grads)
      grads = [_clip_to_norm(g, norm, self.global_clipnorm) for g in grads]
    return grads

  def step(self, params, grads, touched_rows=None):
    """touched_rows[i]: rows of params[i] present in a sparse gradient (lazy mode only)."""
    grads = self._clip([np.asarray(g, np.float64) for g in grads])
    if self.m is None:
      self.m = [np.zeros_like(p, np.float64) for p in params]
      self.v = [np.zeros_like(p, np.float64) for p in params]
      self.vhat = [np.zeros_like(p, np.float64) for p in params]
    lr = self.learning_rate
    lr = lr(self.iterations) if callable(lr) else lr
    t = self.iterations + 1
    lr_t = lr * np.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
    for i, g in enumerate(grads):
      rows = Ellipsis
      if self.lazy and touched_rows is not None and touched_rows[i] is not None:
        rows = np.unique(touched_rows[i])
      m, v, vhat = self.m[i], self.v[i], self.vhat[i]
      # Decoupled weight decay (AdamW): the plain learning rate, before the Adam step.
      params[i][rows] = params[i][rows] - lr * self.weight_decay * params[i][rows]
      m[rows] = self.beta_1 * m[rows] + (1 - self.beta_1) * g[rows]
      v[rows] = self.beta_2 * v[rows] + (1 - self.beta_2) * g[rows]**2
      second = v
      if self.amsgrad:
        vhat[rows] = np.maximum(vhat[rows], v[rows])
        second = vhat
      params[i][rows] = params[i][rows] - lr_t * m[rows] / (np.sqrt(second[rows]) + self.epsilon)
    self.iterations += 1
    return params


def _norm(arrays):
  """The 2-norm of all elements of `arrays`; scaled by the largest magnitude, so that the squares
  of finite values cannot overflow. inf or NaN when an element is."""
  peak = np.max([np.max(np.abs(a)) for a in arrays if a.size] or [0.0])
  if not 0 < peak < np.inf:
    return peak
  return peak * np.sqrt(sum(np.sum((a / peak)**2) for a in arrays))


def _clip_to_norm(g, norm, limit):
  """g * limit / max(norm, limit); all NaN when the norm is not finite (documented behaviour)."""
  if not np.isfinite(norm):
    return g * np.nan
  return g * limit / max(norm, limit)
