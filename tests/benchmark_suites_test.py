"""Tests of the suites, tools/bench/optimizer.py, step.py and embedding.py, on small settings,
with the CPU split into 2 logical devices before TensorFlow starts, as the step suite's child
processes are. The embedding run and the step probe go to child processes started with the
module, so that their TensorFlow start-up and compiling overlap the in-process tests'."""

import concurrent.futures
import contextlib
import functools
import io
import math
import os
import sys

import numpy as np
import pytest

from adam_xla import cpu_kernel
from tests import pytest_main
from tools.bench import child
from tools.bench import configs
from tools.bench import embedding
from tools.bench import harness
from tools.bench import optimizer as bo
from tools.bench import profile
from tools.bench import step

child.split_cpu(2)


@pytest.fixture(scope="module", autouse=True)
def children(request):
  """{fixture name: Future} of the child processes that the selected tests' fixtures take,
  started before the module's first test."""
  calls = {
      "embedding_run": (f"{__name__}:printed_embedding_run",),
      "probe_figures": ("tools.bench.step:probe", _step_config(), step.Group("default"), "mlp16m",
                        "adam_xla fused spl=1"),
  }
  selected = {name for item in request.session.items for name in item.fixturenames}
  with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
    yield {
        name: pool.submit(child.call, *call, quiet=True) for name, call in calls.items()
        if name in selected
    }


def _positive_finite(value):
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


# ---- optimizer: a small run of every variant, the agreement check, the peers, targets -----

_OPTIMIZERS = ("adam_xla", "adam_xla own slots", "adam_xla, XLA loops", "keras jit", "keras no-jit",
               "tf ResourceApplyAdam", "jit Adam, one flat buffer")
# peer_adam.py's float32 NumPy Adam (epsilon after) run by this interpreter: the peers' process
# protocol, rounds and check without torch or jax.
_NUMPY_PEER = "numpy peer"
_REGISTRY = {**bo.VARIANTS, _NUMPY_PEER: functools.partial(bo.PeerAdam, system="numpy")}
_CASE = configs.Case(40_000, 8)


def _optimizer_config(**settings):
  return configs.make(
      configs.OptimizerConfig, quick=True, **{
          "cases": (_CASE,), "bandwidth_mb": 8, "steps": 3, "peer_python": sys.executable,
          **settings
      })


@pytest.fixture(scope="module")
def optimizer_run():
  """(printed report, returned report) of run() over every variant and the NumPy peer."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    report = bo.run(_optimizer_config(), registry=_REGISTRY)
  return out.getvalue(), report


def test_every_variant_is_timed_or_skipped_with_the_reason(optimizer_run):
  stdout, report = optimizer_run
  assert report["suite"] == "optimizer" and report["config"]["steps"] == 3
  [case] = report["cases"]
  assert set(case["variants"]) | set(case["skipped"]) == set(_REGISTRY)
  for name, reason in case["skipped"].items():  # torch and optax run where they are installed
    assert name in (bo.TORCH, bo.OPTAX) and "cannot import" in reason, (name, reason)
  for name in list(_REGISTRY) + ["Adam floor"]:
    assert any(line.startswith("40,000 x 8") and name in line for line in stdout.splitlines())
  assert "Checks: none" in stdout and report["checks"] == []
  assert _positive_finite(case["bandwidth_gbps"]) and _positive_finite(case["adam_floor_ms"])
  for name, result in case["variants"].items():
    assert result["min_ms"] <= result["median_ms"] <= result["max_ms"], name
    assert _positive_finite(result["median_ms"]) and len(result["rounds"]) == 1
  for name in _OPTIMIZERS + (_NUMPY_PEER,):
    result = case["variants"][name]
    for key in ("keras_jit_over_this", "x_floor", "gbps"):
      assert _positive_finite(result[key]), (name, key)
    assert result["steps_per_round"] == 3 and result["state_bytes"] >= 8 * _CASE.params, name
    for key, peer in (("x_torch", bo.TORCH), ("x_optax", bo.OPTAX)):
      assert (result[key] is None) == (peer in case["skipped"]), (name, key)
  assert case["variants"]["keras jit"]["keras_jit_over_this"] == 1.0
  probe = case["variants"][bo.PROBE]
  assert probe["bytes_per_step"] == 28 * 8 * 2**16 and probe["steps_per_round"] >= 3
  # The bound and the reference are timed, not Adam: out of the agreement; only the reference
  # moves Adam's bytes and has a floor ratio.
  bound = case["variants"]["bound: var -= grad per variable"]
  reference = case["variants"]["reference: var, m, v per variable"]
  assert bound["bytes_per_step"] == 12 * _CASE.params and bound["x_floor"] is None
  assert reference["bytes_per_step"] == 28 * _CASE.params
  assert _positive_finite(reference["x_floor"])


def test_the_variants_agree_with_each_other_and_numpy(optimizer_run):
  _, report = optimizer_run
  agreement = report["cases"][0]["agreement"]
  assert agreement["steps"] == 1 + 2 * 3 and 0 < agreement["tolerance"] < 1e-5
  assert set(agreement["variants"]) == set(_OPTIMIZERS) | {_NUMPY_PEER}
  for name, row in agreement["variants"].items():
    assert row["steps"] == row["steps_reported_by_variant"] == 7, name
    assert row["max_abs_diff_vs_numpy_first_tensor"] <= agreement["tolerance"], name
  # Packed or own slots, the kernel does the same arithmetic on the same elements.
  assert agreement["variants"]["adam_xla own slots"]["max_abs_diff_vs_adam_xla"] == 0.0
  peer = agreement["variants"][_NUMPY_PEER]  # another formula: held against its own only
  assert peer["numpy_formula"] == "epsilon after" and peer["max_abs_diff_vs_adam_xla"] is None


def test_bounds_do_their_work():
  problem = bo.make_problem(configs.Case(600, 3), seed=0)
  for with_slots in (False, True):
    bound = bo.PerVariableBound(problem, with_slots=with_slots)
    bound.run(4)
    for k, var in enumerate(bound._vars):
      np.testing.assert_allclose(var.numpy(), problem.initial[k] - 4 * problem.grad_values[k],
                                 rtol=1e-5, atol=1e-7)
    for k, (m, v) in enumerate(bound._slots):
      np.testing.assert_allclose(m.numpy(), 4 * problem.grad_values[k], rtol=1e-5)
      np.testing.assert_allclose(v.numpy(), 4 * problem.grad_values[k], rtol=1e-5)
    assert len(bound._slots) == (3 if with_slots else 0)


def test_xla_loops_variant_is_traced_without_the_cpu_kernel():
  problem = bo.make_problem(configs.Case(4000, 4), seed=0)
  before = os.environ.get(cpu_kernel.ENV_SWITCH)
  hlo = {
      name: bo.VARIANTS[name](problem)._update.experimental_get_compiler_ir()(stage="hlo")
      for name in ("adam_xla", "adam_xla, XLA loops")
  }
  assert hlo["adam_xla"].count(cpu_kernel.TARGET) == 1  # one call for the 4 tensors
  assert cpu_kernel.TARGET not in hlo["adam_xla, XLA loops"]
  assert os.environ.get(cpu_kernel.ENV_SWITCH) == before


def test_run_stops_on_a_variant_doing_different_work():
  registry = {
      "adam_xla": bo.AdamXla, "keras jit": bo.VARIANTS["keras jit"],
      "adam_xla lr +1%": lambda p: bo.AdamXla(p, learning_rate=1.01 * bo.LEARNING_RATE)
  }
  with contextlib.redirect_stdout(io.StringIO()) as out:
    with pytest.raises(bo.ParameterMismatch) as raised:
      bo.run(_optimizer_config(cases=(configs.Case(2000, 2),)), registry=registry)
  failures = str(raised.value).splitlines()[1:]
  assert [f.split(" by ")[0].strip() for f in failures] == [
      "adam_xla lr +1% differs from adam_xla", "adam_xla lr +1% differs from float64 NumPy Adam"
  ]
  assert "keras jit" in out.getvalue()  # the agreement table is printed before stopping


def test_a_peer_matches_its_formula_and_a_wrong_one_is_caught():
  problem = bo.make_problem(configs.Case(3000, 3), seed=2, peer_python=sys.executable)
  for learning_rate, declared_hat, caught in ((bo.LEARNING_RATE, False,
                                               False), (1.01 * bo.LEARNING_RATE, False, True),
                                              (bo.LEARNING_RATE, True, True)):
    peer = bo.PeerAdam(problem, "numpy", learning_rate=learning_rate)
    try:
      peer.epsilon_hat = declared_hat  # True: held against adam_xla's formula
      peer.run(1)
      harness.time_rounds("test", {"peer": peer}, {"peer": 6}, 2, 0)
      agreement = bo.compare_parameters({"peer": peer}, problem, {"peer": 13})
      params = peer.params()
    finally:
      peer.close()
    assert peer._process.returncode == 0 and not os.path.exists(peer._dir)
    assert peer.steps_done == 13  # the peer counts its steps itself
    failures, row = bo.agreement_failures(agreement), agreement["variants"]["peer"]
    if caught:
      assert failures == [
          f"peer differs from float64 NumPy Adam by "
          f"{row['max_abs_diff_vs_numpy_first_tensor']:.3g} (tolerance "
          f"{agreement['tolerance']:.3g})"
      ]
      assert row["max_abs_diff_vs_numpy_first_tensor"] > 10 * agreement["tolerance"]
    else:
      assert not failures
      for k, values in enumerate(params):  # every tensor, not only the first the suite checks
        np.testing.assert_allclose(
            values,
            bo.numpy_reference(problem.initial[k], problem.grad_values[k], 13, epsilon_hat=False),
            rtol=0, atol=agreement["tolerance"])


def test_unavailable_peers_are_skipped_with_the_reason():
  problem = bo.make_problem(configs.Case(20, 2), seed=0)
  with pytest.raises(harness.Unavailable, match="no --peer_python given"):
    bo.PeerAdam(problem, "torch")
  problem.peer_python = "/nonexistent/python"
  _, _, skipped = harness.build("test", [(bo.TORCH, lambda: bo.PeerAdam(problem, "torch"), False)])
  assert "cannot start --peer_python" in skipped[bo.TORCH]


def test_unequal_step_counts_are_failures():
  row = lambda steps, reported, diff: {
      "steps": steps, "steps_reported_by_variant": reported, "max_abs_diff_vs_adam_xla": 0.0,
      "max_abs_diff_vs_numpy_first_tensor": diff
  }
  failures = bo.agreement_failures({
      "steps": 11, "tolerance": 1e-6, "variants": {
          "adam_xla": row(11, 11, 1e-8), "other": row(10, 10, float("nan")),
          "miscounting": row(11, 12, 0.0)
      }
  })
  assert len(failures) == 3, failures
  assert "other applied 10 steps" in failures[0] and "float64 NumPy" in failures[1]
  assert "miscounting counts 12 steps of the 11" in failures[2]


def test_numpy_reference_formulas():
  # First step: lr_t m / (sqrt(v) + eps) = lr g / (|g| + eps / sqrt(1 - beta_2)) with epsilon
  # hat; torch's and optax's epsilon after the correction gives lr g / (|g| + eps).
  grad = np.array([3.0, -0.5, 1e-6])
  hat = bo.EPSILON / np.sqrt(1 - bo.BETA_2)
  np.testing.assert_allclose(bo.numpy_reference(np.zeros(3), grad, steps=1),
                             -bo.LEARNING_RATE * grad / (np.abs(grad) + hat), rtol=1e-12)
  np.testing.assert_allclose(bo.numpy_reference(np.zeros(3), grad, 1, epsilon_hat=False),
                             -bo.LEARNING_RATE * grad / (np.abs(grad) + bo.EPSILON), rtol=1e-12)


def _case_row(case, adam_ms, keras_ms, floor_ms, torch_ms=None, optax_ms=None):
  variants = {"adam_xla": {"median_ms": adam_ms}, "keras jit": {"median_ms": keras_ms}}
  for result in variants.values():
    result.update(x_floor=result["median_ms"] / floor_ms, keras_jit_over_this=keras_ms /
                  result["median_ms"], x_torch=torch_ms and result["median_ms"] / torch_ms,
                  x_optax=optax_ms and result["median_ms"] / optax_ms)
  return {"params": case.params, "tensors": case.tensors, "variants": variants}


def test_checks_only_for_the_target_cases():
  assert bo.compute_checks([_case_row(configs.Case(400_000, 20), 1.0, 1.0, 0.5)]) == []
  large = _case_row(configs.Case(16_000_000, 50), 10.0, 20.0, 8.0, torch_ms=20.0, optax_ms=40.0)
  many = _case_row(configs.Case(1_000_000, 200), 2.0, 8.0, 0.5, torch_ms=1.6, optax_ms=4.0)
  checks = bo.compute_checks([many, large])
  assert [(c["name"], c["value"], c["target"], c["passed"]) for c in checks
         ] == [("x floor at 16,000,000 x 50", 1.25, "<= 1.2x", False),
               ("adam_xla / torch fused at 16,000,000 x 50", 0.5, "<= 1x", True),
               ("keras jit / adam_xla at 16,000,000 x 50", 2.0, ">= 1.6x", True),
               ("adam_xla / optax at 1,000,000 x 200", 0.5, "<= 1x", True),
               ("adam_xla / torch fused at 1,000,000 x 200", 1.25, "<= 1.5x", True),
               ("keras jit / adam_xla at 1,000,000 x 200", 4.0, ">= 5x", False)]
  assert bo.compute_checks([_case_row(configs.Case(1_000_000, 200), 2.0, 8.0, 0.5)
                           ]) == [checks[-1]]  # without the peers, only the Keras ratio
  assert bo.default_steps(configs.Case(16_000_000, 50)) == 20
  assert bo.default_steps(configs.Case(1_000_000, 200)) == 100


# ---- step: a one-device and a 2-replica group in this process, a probe in a child ----

_TINY = dict(models=("mlp16m",), rounds=1, steps=2, batch_size=8, mlp_hidden=(64, 64),
             shard_devices=(2,), probes=False, profile_calls=2)
_PARAMS = 1024 * 64 + 64 + 64 * 64 + 64 + 64 * 1000 + 1000


def _step_config(**settings):
  return configs.make(configs.StepConfig, quick=True, **{**_TINY, **settings})


@pytest.fixture(scope="module")
def step_report():
  """run() of a default and a shard_state group, its child processes run in this one; the
  probes made up: (report, printed, the calls)."""
  calls = []

  def call(target, *args, logical_cpus=None, **unused):
    calls.append((target.split(":")[1], logical_cpus))
    if target.endswith(":run_groups"):
      return step.run_groups(*args)
    variant = args[3]
    return {
        "peak_rss_mb": 900.0, "baseline_rss_mb": 500.0,
        "update_ms_per_step": {"mirrored": 4.0, "sharded": 2.0}.get(variant, 3.0),
        "profile_ms_per_step": {
            "wall": 9.0, "categories": dict.fromkeys(profile.CATEGORIES, 1.0), "kernels": []
        }
    }

  config = _step_config(strategies=("default", "shard_state"), probes=True,
                        variants=("adam_xla fused spl=1", "keras fit jit", "mirrored", "sharded"))
  with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out:
    patch.setattr(step.child, "call", call)
    result = step.run(config)
  return result, out.getvalue(), calls


def test_groups_run_in_a_process_per_device_count_then_each_variant_alone(step_report):
  _, _, calls = step_report
  assert calls == [("run_groups", None),
                   ("run_groups", 2)] + [("probe", None)] * 2 + [("probe", 2)] * 2
  plan = step.processes(_step_config(strategies=configs.STRATEGIES, shard_devices=(2, 4)))
  assert plan == [(2, [step.Group("default"), step.Group("mirrored", 2)]),
                  (2, [step.Group("shard_state", 2)]), (4, [step.Group("shard_state", 4)])]
  assert step.processes(_step_config(strategies=("default",))) == [(None, [step.Group("default")])]


def test_a_failed_process_is_reported_and_its_checks_not_met():

  def call(target, *args, **unused):
    raise child.ChildFailed(f"{target} exited 1")

  config = _step_config(strategies=("default", "shard_state"), probes=False)
  with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out:
    patch.setattr(step.child, "call", call)
    report = step.run(config)
  assert [(r["strategy"], r["rows"]) for r in report["results"]] == [("default", []),
                                                                     ("shard_state", [])]
  assert "default/mlp16m: FAILED, its process failed: tools.bench.step:run_groups exited 1" in (
      out.getvalue())
  assert report["checks"] and not any(check["passed"] for check in report["checks"])


def test_a_group_on_one_device(step_report):
  result = step_report[0]["results"][0]
  assert (result["strategy"], result["replicas"], result["params"]) == ("default", 1, _PARAMS)
  fused, fit = result["rows"]
  assert (fused["variant"], fit["variant"]) == ("adam_xla fused spl=1", "keras fit jit")
  for row in result["rows"]:
    assert row["supported"] and _positive_finite(row["median_steps_per_s"])
    assert row["steps_per_round"] == 2 and len(row["other_cpu_load_per_round"]) == 1
    assert row["peak_rss_mb"] == 900.0  # from its probe
  assert fused["plan"] == "single_program" and fused["fit_overhead_seconds_per_round"] is None
  # fit's time outside its steps is kept apart: whole calls are never faster.
  assert fit["call_seconds_per_round"][0] == pytest.approx(fit["seconds_per_round"][0] +
                                                           fit["fit_overhead_seconds_per_round"][0])
  assert fit["median_steps_per_s_whole_calls"] <= fit["median_steps_per_s"] * (1 + 1e-9)
  # The same weights and batches: the same loss over the same steps.
  assert fused["warmup_loss"] == pytest.approx(fit["warmup_loss"], rel=1e-4)
  assert fit["ratio_vs_keras_jit"] == fit["ratio_vs_best_keras"] == 1.0
  check = step_report[0]["checks"][0]
  assert check["target"] == ">= 1.25x" and check["value"] == fused["ratio_vs_best_keras"]


def test_shard_state_group_compares_mirrored_and_sharded_state(step_report):
  result, printed, _ = step_report
  shard = result["results"][1]
  assert (shard["strategy"], shard["replicas"], shard["per_replica_batch"]) == ("shard_state", 2, 4)
  mirrored, sharded = shard["rows"]
  assert mirrored["state_bytes_per_replica"] == 8 * _PARAMS
  assert mirrored["plan"] == "replica_programs"
  assert "keras fit jit" in printed and "state MB/replica" in printed
  part = sharded["state_bytes_per_replica"]  # adam_xla's own figure; half, give or take padding
  assert 4 * _PARAMS <= part < 5 * _PARAMS
  allowance = sharded["state_padding_allowance_bytes"]
  assert allowance == 2 * 4 * (1000 + 1)  # m and v, float32: the longest row (64 x 1000's) + 1
  checks = [c for c in result["checks"] if c["strategy"] == "shard_state"]
  assert [(c["value"], c["target"]) for c in checks] == [
      (pytest.approx(part / (4 * _PARAMS)), f"<= {1 + 2 * allowance / (8 * _PARAMS):g}x"),
      (0.5, "<= 0.6x"),
      (pytest.approx(sharded["median_steps_per_s"] / mirrored["median_steps_per_s"]), ">= 1.05x")
  ]
  assert checks[0]["passed"] == (part <= 4 * _PARAMS + allowance) and checks[1]["passed"]


@pytest.fixture(scope="module")
def probe_figures(children):
  return children["probe_figures"].result()


def test_a_probe_measures_memory_and_profiles_the_update(probe_figures):
  figures = probe_figures
  assert 50 < figures["baseline_rss_mb"] < figures["warmed_up_in_use_rss_mb"]
  assert figures["peak_rss_mb"] == max(figures["build_peak_rss_mb"], figures["step_peak_rss_mb"])
  assert figures["warmed_up_rss_mb"] + 1 >= figures["warmed_up_in_use_rss_mb"]
  assert figures["step_peak_rss_mb"] >= figures["warmed_up_in_use_rss_mb"] - 1
  assert 0 < figures["warmed_up_file_backed_rss_mb"] < figures["warmed_up_in_use_rss_mb"]
  assert figures["warmed_up_threads"] > 1 and figures["steps"] == 7  # 2 warm-up calls + 5
  # The compiled step's kernels, named through XLA's HLO dump: the model's and the update's.
  categories = figures["profile_ms_per_step"]["categories"]
  assert categories["matmul"] > 0 and categories["conv forward"] == 0
  assert figures["update_ms_per_step"] == categories[profile.UPDATE] > 0
  row = {
      "strategy": "default", "replicas": 1, "model": "mlp16m", "variant": "v", "supported": True,
      "error": None, **figures
  }
  tables = step.format_tables([{"rows": [row]}])
  assert f"{figures['warmed_up_in_use_rss_mb']:.0f}" in tables and "optimizer update" in tables


def _step_row(variant, kind, rate, **figures):
  return {
      "variant": variant, "kind": kind, "supported": rate is not None, "median_steps_per_s": rate,
      **figures
  }


def _result(strategy, rows, model="mlp16m", replicas=1):
  return {"strategy": strategy, "replicas": replicas, "model": model, "rows": rows}


def test_checks_on_made_up_rows():
  checks = step.compute_checks([
      _result("default", [
          _step_row("adam_xla fused spl=1", "adam_xla", 10.0),
          _step_row("adam_xla fused spl=10", "adam_xla", 13.0),
          _step_row("keras fit jit", "keras", 10.0),
          _step_row("keras fit no-jit", "keras", 6.0, median_steps_per_s_whole_calls=5.0)
      ]),
      _result(
          "mirrored",
          [
              _step_row("adam_xla fused spl=1", "adam_xla", 14.0),
              _step_row("adam_xla fit", step.FIT_KIND, 15.0),
              _step_row("keras fit jit", "keras", None),  # unsupported: left out
              _step_row("keras fit no-jit", "keras", 10.0)
          ],
          model="resnet20"),
      _result("mirrored", [
          _step_row("adam_xla fused spl=1", "adam_xla", 15.0),
          _step_row("keras fit no-jit", "keras", None)
      ])
  ])
  assert [(c["value"], c["target"], c["passed"]) for c in checks
         ] == [(pytest.approx(1.3), ">= 1.25x", True), (pytest.approx(1.4), ">= 1.5x", False),
               (pytest.approx(1.5), ">= 1.5x", True), (None, ">= 1.5x", False)]
  assert "(adam_xla fused spl=10) / best keras (keras fit jit)" in checks[0]["name"]
  assert "best adam_xla fit (adam_xla fit) / best keras (keras fit no-jit)" in checks[2]["name"]

  def shard(n, model, full, part, update, rate, padding=8):
    rows = [
        _step_row("mirrored", "adam_xla", 10.0, state_bytes_per_replica=full,
                  state_padding_allowance_bytes=padding, update_ms_per_step=update[0]),
        _step_row("sharded", "adam_xla", rate, state_bytes_per_replica=part,
                  state_padding_allowance_bytes=padding, update_ms_per_step=update[1])
    ]
    return step.shard_checks(_result("shard_state", rows, model, n))

  on_target = shard(2, "mlp16m", 1000, 504, (10.0, 5.0), 11.0)  # 8 B of padding: exact
  assert [(c["value"], c["passed"]) for c in on_target] == [(pytest.approx(1.008), True),
                                                            (0.5, True), (1.1, True)]
  missed = shard(4, "mlp16m", 1000, 260, (10.0, 7.0), 10.0, padding=8)
  assert [(c["value"], c["passed"]) for c in missed] == [(1.04, False), (1.0, False)]  # no update
  assert not shard(2, "resnet20", 1000, 499, (1.0, 0.5), 9.0)[0]["passed"]  # under 1/N: lost
  assert len(shard(2, "resnet20", 1000, 500, (1.0, 0.5), 9.0)) == 2  # steps/s on the MLP only
  unsupported = step.shard_checks(
      _result("shard_state", [
          _step_row("mirrored", "adam_xla", 10.0, state_bytes_per_replica=1000,
                    state_padding_allowance_bytes=8),
          _step_row("sharded", "adam_xla", None)
      ], replicas=2))
  assert [(c["value"], c["passed"]) for c in unsupported] == [(None, False)] * 3


# ---- embedding: two small tables and the growth phase, with what every target needs --

_ROWS = (2_000, 8_000)
_VARIANTS = ("adam_xla lazy", "keras adam no-jit", "optimizer dense", embedding.PROBE)


def printed_embedding_run():
  """(printed, report) of run() on two small tables; run in a child process (`children`)."""
  config = configs.make(configs.EmbeddingConfig, quick=True, rows=_ROWS, batch_size=64,
                        data_batches=4, steps=2, optimizer_steps=2, lazy_growth_steps=2,
                        bandwidth_mb=8, bottom_mlp=(8,), top_mlp=(8,), variants=_VARIANTS)
  with contextlib.redirect_stdout(io.StringIO()) as out:
    report = embedding.run(config)
  return out.getvalue(), report


@pytest.fixture(scope="module")
def embedding_run(children):
  return children["embedding_run"].result()


def test_every_variant_of_both_sizes_is_reported(embedding_run):
  printed, report = embedding_run
  lines = printed.splitlines()
  for rows in _ROWS:
    for variant in _VARIANTS[:3] + ("bandwidth probe", "Adam floor"):
      assert any(line.startswith(f"{rows:,} ") and variant in line for line in lines), (rows,
                                                                                        variant)
  assert "Compiled dense update at" in printed and "Lazy step of every table size" in printed
  assert [c["name"].split(" ")[0] for c in report["checks"]] == ["lazy", "keras", "dense", "dense"]
  for check in report["checks"]:
    assert _positive_finite(check["value"]) and isinstance(check["passed"], bool), check


def test_figures_are_positive_and_finite(embedding_run):
  _, report = embedding_run
  assert report["suite"] == "embedding" and tuple(report["config"]["rows"]) == _ROWS
  for size in report["sizes"]:
    for key in ("bandwidth_gbps", "adam_floor_ms", "table_params", "unique_ids_per_batch"):
      assert _positive_finite(size[key]), key
    assert size["unique_ids_per_batch"] < size["batch_size"]  # Zipf ids repeat
    for name, variant in size["variants"].items():
      assert variant["min_ms"] <= variant["median_ms"] <= variant["max_ms"], name
      assert _positive_finite(variant["median_ms"]) and len(variant["rounds"]) == 1
    assert set(size["variants"]) == set(_VARIANTS) and size["keras_best"] == _VARIANTS[1]
    for name in _VARIANTS[:2]:
      assert _positive_finite(size["variants"][name]["keras_best_over_this"])
      assert _positive_finite(size["variants"][name]["rounds"][0]["loss"])
    assert _positive_finite(size["variants"]["optimizer dense"]["fraction_of_bandwidth"])
    passes = size["dense_update_analysis"]["passes"]
    if cpu_kernel.load():  # the rows kernel's one pass: param, m, v read and written in place
      assert [(p["opcode"], p["table_sized_reads"], p["table_sized_writes"], p["bytes_per_param"])
              for p in passes] == [("custom-call", 3, 3, 24)]
      assert passes[0]["ms"] > 0
    else:  # XLA's loops, the gradient's rows scatter-added in place into the moments
      assert any(p["in_place_rows_only"] for p in passes)
  growth = report["lazy_growth"]
  assert [g["rows"] for g in growth] == list(_ROWS) and growth[0]["ratio_to_smallest"] == 1.0
  assert all(_positive_finite(r) for g in growth for r in g["paired_ratios_to_smallest"])


def test_zipf_ids_repeat_and_stay_in_the_table():
  features, labels = embedding.make_data(1000, 256, 2, "zipf", 1.1, seed=0)
  ids = features["sparse"]
  assert ids.shape == (512, 1) and features["dense"].shape == (512, 13)
  assert labels.shape == (512,) and set(np.unique(labels)) <= {0.0, 1.0}
  assert ids.min() >= 0 and ids.max() < 1000
  assert len(np.unique(ids[:256])) < 200  # frequent ids repeat within a batch
  uniform, _ = embedding.make_data(1000, 256, 2, "uniform", 1.1, seed=0)
  assert len(np.unique(uniform["sparse"][:256])) > len(np.unique(ids[:256]))


if __name__ == "__main__":
  pytest_main.main(__file__)
