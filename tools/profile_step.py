"""Profiles the benchmark's train steps kernel by kernel: where each variant's time goes.

    ./bazelw run //tools:profile_step -- [--models=mlp16m,resnet20] [--calls=5]

For each model of `//tools:benchmark_step` (same builders, data and Adam settings) and each
variant below, a child process builds the variant, warms it up, runs --calls calls of one step
under the TensorFlow profiler and sorts every kernel into a category (tools/step_profile.py):
convolution forward, input gradient and filter gradient, matmul, optimizer update, other.
One process per variant, so that XLA's dump of optimized HLO (which names each compiled kernel
and the TensorFlow op it comes from) holds only that variant's programs.

  adam_xla step            make_train_step: one XLA program per step
  adam_xla xla_scope=update   forward and backward as TensorFlow (oneDNN) ops, update in XLA
  keras fit jit            model.fit, jit_compile=True
  keras fit no-jit         model.fit, jit_compile=False

Profiling slows every kernel a little and the machine may be busy, so this is for finding where
time goes, not for speed ratios; those come from //tools:benchmark.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

from tools import benchmark_step
from tools import step_profile

VARIANTS = ("adam_xla step", "adam_xla xla_scope=update", "keras fit jit", "keras fit no-jit")
MODELS = benchmark_step.MODELS  # same builders

_MODELS = flags.DEFINE_list("models", list(MODELS), f"Models, from {MODELS}.")
_CALLS = flags.DEFINE_integer("calls", 5, "Profiled calls (one step each) per variant.")
_WARMUP = flags.DEFINE_integer("warmup_calls", 3, "Untimed calls before profiling.")
_TOP = flags.DEFINE_integer("top", 8, "Kernels listed per variant, largest first.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the profiles as JSON here.")
_CHILD = flags.DEFINE_string("child", None, "Internal: profile one MODEL:VARIANT, print JSON.")


@dataclasses.dataclass(frozen=True)
class Config:
  models: tuple
  calls: int
  warmup_calls: int
  top: int
  json_out: str


def profile_variant(model_name, variant_name, calls, warmup_calls):
  """In this process: builds one variant, warms it up and profiles `calls` one-step calls."""
  if variant_name not in VARIANTS or model_name not in MODELS:
    raise ValueError(f"unknown model or variant {model_name!r}:{variant_name!r}; models "
                     f"{MODELS}, variants {VARIANTS}.")
  dump_dir = tempfile.mkdtemp(prefix="adam_xla_profile_hlo_")
  # XLA reads XLA_FLAGS when it first compiles (not when TensorFlow is imported): after this.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_dump_to={dump_dir} --xla_dump_hlo_as_text").strip()
  config = benchmark_step.Config()
  batch_size = benchmark_step._DEFAULT_BATCH[model_name]  # pylint: disable=protected-access
  x, y = benchmark_step.make_data(model_name, batch_size, config.seed)
  dataset = benchmark_step.make_dataset(x, y, batch_size)
  model = benchmark_step.build_model(config, model_name)
  if variant_name.startswith("adam_xla"):
    scope = "update" if "update" in variant_name else "step"
    variant = benchmark_step.FusedVariant(variant_name, model, dataset, 1, scope)
  else:
    variant = benchmark_step.KerasFitVariant(variant_name, model, dataset,
                                             "no-jit" not in variant_name, 1)
  variant.run(max(warmup_calls, 1))  # compiles, so the dump now names every kernel
  hlo = step_profile.optimized_hlo_kernels(dump_dir)
  shutil.rmtree(dump_dir, ignore_errors=True)
  result = step_profile.profile(lambda: variant.run(1), calls, hlo)
  result["kernels"] = result["kernels"][:50]
  return {"model": model_name, "variant": variant_name, "params": model.count_params(),
          "batch_size": batch_size, **result}


def run_child(config, model_name, variant_name):
  argv = [sys.executable, "-m", "tools.profile_step", f"--child={model_name}:{variant_name}",
          f"--calls={config.calls}", f"--warmup_calls={config.warmup_calls}"]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path),
             TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
  done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
  lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
  if done.returncode or not lines:
    return {"model": model_name, "variant": variant_name,
            "error": (done.stderr or done.stdout)[-600:]}
  return json.loads(lines[-1])


def format_profiles(profiles, top):
  """One table of ms per step by category for every variant, then each one's top kernels."""
  header = ["model", "variant", "wall ms"] + list(step_profile.CATEGORIES) + ["in kernels"]
  rows = []
  for p in profiles:
    if "error" in p:
      rows.append([p["model"], p["variant"], "failed"] + [""] * (len(header) - 3))
      continue
    cats = p["categories"]
    rows.append([p["model"], p["variant"], f"{p['wall_ms']:.1f}"] +
                [f"{cats[c]:.1f}" for c in step_profile.CATEGORIES] +
                [f"{sum(cats.values()):.1f}"])
  widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
  fmt = lambda r: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths)))
  lines = ["ms per step (one step per call), by kind of kernel:", fmt(header),
           "-" * len(fmt(header))] + [fmt(r) for r in rows]
  for p in profiles:
    if "error" in p:
      lines += ["", f"{p['model']} / {p['variant']}: FAILED: {p['error']}"]
      continue
    lines += ["", f"{p['model']} / {p['variant']}: largest kernels (ms per step)"]
    lines += [f"  {ms:8.2f}  {category:<22} {label}" for label, category, ms
              in p["kernels"][:top]]
  return "\n".join(lines)


def config_from_flags():
  unknown = [m for m in _MODELS.value if m not in MODELS]
  if unknown or not _MODELS.value:
    raise app.UsageError(f"--models must be a comma list from {MODELS}; got {_MODELS.value}.")
  for name, value in (("calls", _CALLS.value), ("top", _TOP.value)):
    if value < 1:
      raise app.UsageError(f"--{name} must be >= 1; got {value}.")
  if _WARMUP.value < 0:
    raise app.UsageError(f"--warmup_calls must be >= 0; got {_WARMUP.value}.")
  return Config(tuple(_MODELS.value), _CALLS.value, _WARMUP.value, _TOP.value, _JSON_OUT.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = config_from_flags()
  if _CHILD.value:
    model_name, variant_name = _CHILD.value.split(":", 1)
    print(json.dumps(profile_variant(model_name, variant_name, config.calls,
                                     config.warmup_calls)))
    return
  profiles = []
  for model_name in config.models:
    for variant_name in VARIANTS:
      print(f"profiling {model_name} / {variant_name} ...", flush=True)
      profiles.append(run_child(config, model_name, variant_name))
  print()
  print(format_profiles(profiles, config.top))
  if config.json_out:
    path = os.path.join(os.environ.get("BUILD_WORKING_DIRECTORY", ""), config.json_out)
    with open(path, "w") as f:
      json.dump(profiles, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
