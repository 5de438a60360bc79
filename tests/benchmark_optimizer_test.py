"""Smoke test of tools/benchmark_optimizer.py: the --quick config through run(), and its parts."""

import contextlib
import functools
import io
import json
import math
import os
import sys
import time

from absl import app
from absl import flags
import numpy as np
import pytest

from adam_xla import cpu_kernel
from tests import pytest_main
from tools import benchmark_optimizer as bo

_OPTIMIZERS = ("adam_xla", "adam_xla own slots", "adam_xla, XLA loops", "keras jit",
               "keras no-jit", "tf ResourceApplyAdam", "jit Adam, one flat buffer")
_QUICK_CASES = bo.parse_cases(bo.QUICK["cases"])
# tools/peer_adam.py's in-place float32 NumPy Adam (epsilon after), run by this interpreter:
# the peers' process protocol, interleaving and check without torch or jax.
_NUMPY_PEER = "numpy peer"
_REGISTRY = {**bo.VARIANTS, _NUMPY_PEER: functools.partial(bo.PeerAdam, system="numpy")}


def _positive_finite(value):
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _quick_config(**overrides):
  settings = dict(cases=_QUICK_CASES, rounds=bo.QUICK["rounds"],
                  warmup_rounds=bo.QUICK["warmup_rounds"], steps=bo.QUICK["steps"],
                  bandwidth_mb=bo.QUICK["bandwidth_mb"], quick=True, command="test",
                  peer_python=sys.executable)
  settings.update(overrides)
  return bo.Config(**settings)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  """run() on the --quick config with the NumPy peer, this interpreter as --peer_python:
  (printed report, returned report, report from the JSON)."""
  path = tmp_path_factory.mktemp("benchmark") / "out.json"
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    report = bo.run(_quick_config(json_out=str(path)), registry=_REGISTRY)
  with open(path) as f:
    return out.getvalue(), report, json.load(f)


def test_report_has_every_case_and_variant(quick_run):
  stdout, report, written = quick_run
  assert written["suite"] == report["suite"] == "optimizer"
  assert {"command", "machine", "config", "single_thread_bandwidth", "cases", "checks",
          "wall_seconds"} <= set(written)
  assert [(c["params"], c["tensors"]) for c in written["cases"]] == [
      (c.params, c.tensors) for c in _QUICK_CASES]
  for case in written["cases"]:
    # The torch and optax peers run where this interpreter has them; else their rows say why.
    assert set(case["variants"]) | set(case["skipped"]) == set(_REGISTRY)
    assert _NUMPY_PEER in case["variants"] and not set(case["variants"]) & set(case["skipped"])
    for name, reason in case["skipped"].items():
      assert name in (bo.TORCH, bo.OPTAX) and "cannot import" in reason, (name, reason)
      assert f"{name} (" in stdout and f"{name}: skipped" in stdout
    label = f"{case['params']:,} x {case['tensors']}"
    for name in list(_REGISTRY) + ["Adam floor"]:
      assert any(line.startswith(label) and name in line for line in stdout.splitlines()), (
          label, name)
  assert _positive_finite(written["single_thread_bandwidth"]["gbps"])
  assert "Checks: none" in stdout


def test_times_and_ratios_are_positive_and_finite(quick_run):
  _, _, report = quick_run
  for case in report["cases"]:
    assert _positive_finite(case["bandwidth_gbps"]) and _positive_finite(case["adam_floor_ms"])
    for name, result in case["variants"].items():
      for key in ("median_ms", "min_ms", "max_ms", "first_call_seconds"):
        assert _positive_finite(result[key]), (name, key, result[key])
      assert result["min_ms"] <= result["median_ms"] <= result["max_ms"]
      assert len(result["rounds"]) == bo.QUICK["rounds"]
      assert all(_positive_finite(r["seconds"]) and r["steps"] >= 1 for r in result["rounds"])
    for name in _OPTIMIZERS + (_NUMPY_PEER,):
      result = case["variants"][name]
      for key in ("keras_jit_over_this", "x_floor", "gbps"):
        assert _positive_finite(result[key]), (name, key, result[key])
      assert result["steps_per_round"] == bo.QUICK["steps"]
      # m and v of every parameter, at least.
      assert result["state_bytes"] >= 8 * case["params"], name
      for key, peer in (("x_torch", bo.TORCH), ("x_optax", bo.OPTAX)):
        assert (result[key] is None) == (peer in case["skipped"]), (name, key)
    assert case["variants"]["keras jit"]["keras_jit_over_this"] == 1.0
    assert case["variants"][_NUMPY_PEER]["kind"] == "peer"
    probe = case["variants"][bo.PROBE]
    assert probe["threads"] >= 1 and probe["bytes_per_step"] == 28 * (
        bo.QUICK["bandwidth_mb"] * 2**20 // 16)
    assert case["bandwidth_gbps"] == pytest.approx(
        probe["bytes_per_step"] / (probe["median_ms"] * 1e6))
    # The lower bound is timed and compared with Keras, but it is not Adam: no floor ratio,
    # and it stays out of the parameter agreement (test_variants_agree_and_match_numpy).
    bound = case["variants"]["bound: var -= grad per variable"]
    assert bound["kind"] == "bound" and bound["x_floor"] is None
    assert _positive_finite(bound["keras_jit_over_this"])
    assert bound["bytes_per_step"] == 12 * case["params"]
    # The var, m, v reference moves Adam's bytes, so it has a floor ratio too; not Adam
    # either, it stays out of the agreement.
    reference = case["variants"]["reference: var, m, v per variable"]
    assert reference["kind"] == "reference" and _positive_finite(reference["x_floor"])
    assert reference["bytes_per_step"] == 28 * case["params"]


@pytest.mark.parametrize("with_slots", [False, True])
def test_bounds_do_their_work(with_slots):
  problem = bo.make_problem(bo.Case(params=600, tensors=3), seed=0, bandwidth_mb=1)
  bound = bo.PerVariableBound(problem, with_slots=with_slots)
  bound.run(4)
  for k, (var, grad) in enumerate(zip(bound._vars, problem.grads)):
    np.testing.assert_allclose(var.numpy(), problem.initial[k] - 4 * grad.numpy(), rtol=1e-5,
                               atol=1e-7)
  slot_values = [s.numpy() for pair in bound._slots for s in pair]
  assert len(slot_values) == (6 if with_slots else 0)
  for k, value in enumerate(slot_values):
    np.testing.assert_allclose(value, 4 * problem.grads[k // 2].numpy(), rtol=1e-5)


def test_variants_agree_and_match_numpy(quick_run):
  _, _, report = quick_run
  expected_steps = 1 + (bo.QUICK["warmup_rounds"] + bo.QUICK["rounds"]) * bo.QUICK["steps"]
  for case in report["cases"]:
    agreement = case["agreement"]
    assert agreement["steps"] == expected_steps
    assert 0 < agreement["tolerance"] < 1e-5
    assert set(agreement["variants"]) == set(_OPTIMIZERS) | {_NUMPY_PEER}
    for name, row in agreement["variants"].items():
      assert row["steps"] == row["steps_reported_by_variant"] == expected_steps, name
      assert row["max_abs_diff_vs_numpy_first_tensor"] <= agreement["tolerance"], name
      if name != _NUMPY_PEER:
        assert row["max_abs_diff_vs_adam_xla"] <= agreement["tolerance"], name
    assert agreement["variants"]["adam_xla"]["max_abs_diff_vs_adam_xla"] == 0.0
    # Packed or own slots, the kernel does the same arithmetic on the same elements.
    assert agreement["variants"]["adam_xla own slots"]["max_abs_diff_vs_adam_xla"] == 0.0
    # The peer's formula (epsilon after) is checked against its own reference only.
    peer = agreement["variants"][_NUMPY_PEER]
    assert peer["numpy_formula"] == "epsilon after" and peer["max_abs_diff_vs_adam_xla"] is None


def _registry_with_wrong_learning_rate():
  registry = {"adam_xla": bo.VARIANTS["adam_xla"], "keras jit": bo.VARIANTS["keras jit"]}
  registry["adam_xla lr +1%"] = lambda problem: bo.AdamXla(
      problem, learning_rate=1.01 * bo.LEARNING_RATE)
  return registry


def test_xla_loops_variant_is_traced_without_the_cpu_kernel():
  problem = bo.make_problem(bo.parse_cases(["4000x4"])[0], seed=0, bandwidth_mb=1)
  before = os.environ.get(cpu_kernel.ENV_SWITCH)
  hlo = {name: bo.VARIANTS[name](problem)._update.experimental_get_compiler_ir()(stage="hlo")
         for name in ("adam_xla", "adam_xla, XLA loops")}
  assert hlo["adam_xla"].count(cpu_kernel.TARGET) == 1  # one call for the 4 tensors
  assert cpu_kernel.TARGET not in hlo["adam_xla, XLA loops"]
  assert os.environ.get(cpu_kernel.ENV_SWITCH) == before


def test_a_variant_doing_different_work_is_detected():
  problem = bo.make_problem(bo.Case(4000, 4), seed=1, bandwidth_mb=1)
  registry = _registry_with_wrong_learning_rate()
  variants, _, skipped = bo.build_variants(problem, list(registry), registry)
  assert not skipped
  steps = {name: 5 for name in variants}
  _, applied, _ = bo.time_variants("test", variants, steps, rounds=2, warmup_rounds=0)
  agreement = bo.compare_parameters(variants, problem, applied)
  failures = bo.agreement_failures(agreement)
  assert len(failures) == 2 and all(f.startswith("adam_xla lr +1% differs") for f in failures)
  wrong = agreement["variants"]["adam_xla lr +1%"]
  assert wrong["max_abs_diff_vs_adam_xla"] > 10 * agreement["tolerance"]
  assert agreement["variants"]["keras jit"]["max_abs_diff_vs_adam_xla"] <= agreement["tolerance"]


def _numpy_peers(problem, **kwargs):
  return {"peer": bo.PeerAdam(problem, "numpy", **kwargs)}


def test_peer_process_matches_its_formula_and_a_wrong_one_is_caught():
  problem = bo.make_problem(bo.Case(3000, 3), seed=2, bandwidth_mb=1,
                            peer_python=sys.executable)
  for learning_rate, declared_hat, caught in ((bo.LEARNING_RATE, False, False),
                                              (1.01 * bo.LEARNING_RATE, False, True),
                                              (bo.LEARNING_RATE, True, True)):
    variants = _numpy_peers(problem, learning_rate=learning_rate)
    try:
      variants["peer"].epsilon_hat = declared_hat  # True: held against adam_xla's formula
      variants["peer"].run(1)
      _, applied, reported = bo.time_variants("test", variants, {"peer": 6}, 2, 0)
      assert applied == reported == {"peer": 13}  # the peer counts its steps itself
      agreement = bo.compare_parameters(variants, problem, applied, reported)
      params = variants["peer"].params()
    finally:
      variants["peer"].close()
    assert variants["peer"]._process.returncode == 0
    assert not os.path.exists(variants["peer"]._dir)
    failures = bo.agreement_failures(agreement)
    row = agreement["variants"]["peer"]
    if caught:
      assert failures == [f"peer differs from float64 NumPy Adam by "
                          f"{row['max_abs_diff_vs_numpy_first_tensor']:.3g} (tolerance "
                          f"{agreement['tolerance']:.3g})"]
      assert row["max_abs_diff_vs_numpy_first_tensor"] > 10 * agreement["tolerance"]
    else:
      assert not failures
      # Every tensor, not only the first that the tool checks.
      for k, values in enumerate(params):
        np.testing.assert_allclose(values, bo.numpy_adam(
            problem.initial[k], problem.grad_values[k], 13, epsilon_hat=False),
                                   rtol=0, atol=agreement["tolerance"])


def test_unavailable_peers_are_skipped_with_the_reason():
  problem = bo.make_problem(bo.Case(20, 2), seed=0, bandwidth_mb=1)
  with pytest.raises(bo.PeerUnavailable, match="no --peer_python given"):
    bo.PeerAdam(problem, "torch")
  problem.peer_python = "/nonexistent/python"
  registry = {"adam_xla": bo.VARIANTS["adam_xla"], bo.TORCH: bo.VARIANTS[bo.TORCH]}
  variants, setup, skipped = bo.build_variants(problem, list(registry), registry)
  assert list(variants) == list(setup) == ["adam_xla"]
  assert list(skipped) == [bo.TORCH] and "cannot start --peer_python" in skipped[bo.TORCH]


def test_a_peers_cpu_time_is_not_other_load():
  class Sleeper(bo.Variant):
    kind = "bound"

    def run(self, steps):
      time.sleep(0.15)
      self.child_cpu_seconds = 0.15 * os.cpu_count()  # as if its process kept every core busy

  records, _, _ = bo.time_variants("test", {"sleeper": Sleeper(bo.make_problem(
      bo.Case(2, 1), seed=0, bandwidth_mb=1))}, {"sleeper": 1}, rounds=2, warmup_rounds=0)
  for record in records["sleeper"]:
    assert record["cores"] == pytest.approx(os.cpu_count(), rel=0.2)
    assert record["other_load"] in (None, 0.0)


def test_stream_probe_streams_every_element():
  probe = bo.stream_probe.StreamProbe(megabytes=1, threads=3)
  try:
    assert probe.elements == 2**16 and probe.bytes_per_pass == 28 * 2**16
    probe.run(2)  # x = x / 2 + g from 0 with g = 1: 1, then 1.5
    for k, expected in enumerate((1.5, 1.0, 1.5, 1.5)):
      np.testing.assert_array_equal(probe.array(k), np.full(2**16, expected, np.float32))
  finally:
    probe.close()


def test_run_stops_on_a_disagreeing_variant():
  config = bo.Config(cases=(bo.Case(2000, 2),), rounds=1, warmup_rounds=0, steps=3,
                     bandwidth_mb=1, variants=("adam_xla", "adam_xla lr +1%"), command="test")
  with contextlib.redirect_stdout(io.StringIO()):
    with pytest.raises(bo.ParameterMismatch, match="adam_xla lr \\+1% differs from adam_xla"):
      bo.run(config, registry=_registry_with_wrong_learning_rate())


def test_unequal_step_counts_are_failures():
  agreement = {"steps": 11, "tolerance": 1e-6, "variants": {
      "adam_xla": {"steps": 11, "steps_reported_by_variant": 11,
                   "max_abs_diff_vs_adam_xla": 0.0, "max_abs_diff_vs_numpy_first_tensor": 1e-8},
      "other": {"steps": 10, "steps_reported_by_variant": 10, "max_abs_diff_vs_adam_xla": 1e-8,
                "max_abs_diff_vs_numpy_first_tensor": float("nan")},
      "miscounting": {"steps": 11, "steps_reported_by_variant": 12,
                      "max_abs_diff_vs_adam_xla": 0.0,
                      "max_abs_diff_vs_numpy_first_tensor": 0.0}}}
  failures = bo.agreement_failures(agreement)
  assert len(failures) == 3, failures
  assert "other applied 10 steps" in failures[0] and "float64 NumPy" in failures[1]
  assert "miscounting counts 12 steps of the 11" in failures[2]


def test_numpy_adam_uses_epsilon_hat():
  # First step: lr_t m / (sqrt(v) + eps) = lr g / (|g| + eps / sqrt(1 - beta_2)). Epsilon as in
  # Algorithm 1 (added to the bias-corrected sqrt(v)) would give lr g / (|g| + eps) instead.
  grad = np.array([3.0, -0.5, 1e-6])
  after = bo.numpy_adam(np.zeros(3), grad, steps=1)
  hat = bo.EPSILON / np.sqrt(1 - bo.BETA_2)
  np.testing.assert_allclose(after, -bo.LEARNING_RATE * grad / (np.abs(grad) + hat),
                             rtol=1e-12)
  assert after[2] > -0.25 * bo.LEARNING_RATE  # far from lr * sign(g) at |g| ~ eps hat
  after = bo.numpy_adam(np.zeros(3), grad, steps=1, epsilon_hat=False)  # torch's, optax's
  np.testing.assert_allclose(after, -bo.LEARNING_RATE * grad / (np.abs(grad) + bo.EPSILON),
                             rtol=1e-12)


def _row(params, tensors, adam_ms, keras_ms, floor_ms, torch_ms=None, optax_ms=None):
  row = {"params": params, "tensors": tensors, "adam_floor_ms": floor_ms, "variants": {
      "adam_xla": {"kind": "optimizer", "median_ms": adam_ms},
      "keras jit": {"kind": "optimizer", "median_ms": keras_ms}}}
  for result in row["variants"].values():
    result["x_floor"] = result["median_ms"] / floor_ms
    result["keras_jit_over_this"] = keras_ms / result["median_ms"]
    result["x_torch"] = torch_ms and result["median_ms"] / torch_ms
    result["x_optax"] = optax_ms and result["median_ms"] / optax_ms
  return row


def test_checks_only_for_the_issue_cases():
  assert bo.compute_checks([_row(400_000, 20, 1.0, 1.0, 0.5)]) == []
  # x floor 1.25, adam/torch 0.5, keras/adam 2.0; no optax at 16M: nothing to check there.
  large = _row(16_000_000, 50, 10.0, 20.0, 8.0, torch_ms=20.0, optax_ms=40.0)
  many = _row(1_000_000, 200, 2.0, 8.0, 0.5, torch_ms=1.6, optax_ms=4.0)
  checks = bo.compute_checks([many, _row(16_000_000, 20, 1.0, 1.0, 1.0), large])
  assert [(c["name"], c["value"], c["passed"]) for c in checks] == [
      ("x floor at 16,000,000 x 50", 1.25, False),
      ("adam_xla / torch fused at 16,000,000 x 50", 0.5, True),
      ("keras jit / adam_xla at 16,000,000 x 50", 2.0, True),
      ("adam_xla / optax at 1,000,000 x 200", 0.5, True),
      ("adam_xla / torch fused at 1,000,000 x 200", 1.25, True),
      ("keras jit / adam_xla at 1,000,000 x 200", 4.0, False)]
  for check in checks:
    assert set(check) == {"name", "value", "target", "passed", "unit"}
  assert [c["target"] for c in checks] == [
      f"<= {bo.FLOOR_RATIO_MAX_16M:g}x", f"<= {bo.TORCH_RATIO_MAX_16M:g}x",
      f">= {bo.KERAS_OVER_ADAM_XLA_MIN_16M:g}x", f"<= {bo.OPTAX_RATIO_MAX_1M:g}x",
      f"<= {bo.TORCH_RATIO_MAX_1M:g}x", f">= {bo.KERAS_OVER_ADAM_XLA_MIN_1M:g}x"]
  # Without keras jit or the peers (not run) their ratios cannot be checked.
  many = _row(1_000_000, 200, 2.0, 8.0, 0.5)
  del many["variants"]["keras jit"]
  many["variants"]["adam_xla"]["keras_jit_over_this"] = None
  assert bo.compute_checks([many]) == []


def test_default_steps():
  assert bo.default_steps(bo.Case(16_000_000, 50)) == 20
  assert bo.default_steps(bo.Case(1_000_000, 200)) == 100
  assert bo.default_steps(bo.Case(10**9, 1000)) == 5


def _parsed_flags(argv):
  """The tool's flags, defined on their own FlagValues and parsed from argv."""
  flag_values = flags.FlagValues()
  bo.define_flags(flag_values)
  flag_values(["benchmark_optimizer"] + argv)
  return flag_values


@pytest.mark.parametrize("argv", [["--cases=16000000"], ["--cases=abcx5"], ["--cases=10x3"],
                                  ["--cases=8x2,8x2"], ["--cases=0x0"]])
def test_bad_cases_flag_is_named(argv):
  with pytest.raises(app.UsageError, match="--cases"):
    bo.config_from_flags(_parsed_flags(argv))


def test_flags_quick_defaults_and_explicit_flags_win():
  config = bo.config_from_flags(_parsed_flags(["--quick", "--rounds=2",
                                               "--variants=adam_xla, keras jit",
                                               "--peer_python=/venv/bin/python"]))
  assert config.cases == _QUICK_CASES and config.steps == bo.QUICK["steps"]
  assert config.rounds == 2 and config.variants == ("adam_xla", "keras jit")
  assert config.peer_python == "/venv/bin/python"
  default = bo.config_from_flags(_parsed_flags([]))
  assert [(c.params, c.tensors) for c in default.cases] == [(16_000_000, 50), (1_000_000, 200)]
  assert default.rounds == 7 and default.steps is None and default.bandwidth_mb == 512
  assert default.peer_python is None


@pytest.mark.parametrize("overrides, flag", [
    ({"rounds": 0}, "--rounds"), ({"steps": 0}, "--steps"), ({"warmup_rounds": -1},
                                                              "--warmup_rounds"),
    ({"variants": ("adam_xla", "sgd")}, "--variants"), ({"bandwidth_mb": 0}, "--bandwidth_mb"),
])
def test_bad_settings_name_their_flag(overrides, flag):
  with pytest.raises(app.UsageError, match=flag):
    bo.validate(_quick_config(**overrides), bo.VARIANTS)


if __name__ == "__main__":
  pytest_main.main(__file__)
