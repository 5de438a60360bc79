"""Tests of the pip packaging (pyproject.toml): the wheel a user would build from the checkout,
installed into a fresh virtualenv, works with no trace of the checkout.

The wheel is built from a copy of pyproject.toml, README.md and adam_xla/ in a temporary
directory (setuptools writes build/ and *.egg-info next to its input, and Bazel's runfiles are
read-only), with this interpreter's setuptools and no network. The new virtualenv reuses this
interpreter's TensorFlow through a .pth file instead of installing a second copy, and every
check in it runs from a directory outside the checkout with PYTHONPATH unset, so `adam_xla`
can only come from the installed wheel. Its TensorFlow checks run in one child process (one
TensorFlow import) whose JSON report the tests read.
"""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
import pytest

import adam_xla
from adam_xla import environment
from tests import pytest_main

# The workspace root: the checkout, or under Bazel the runfiles tree (which holds the declared
# data and the package's sources). Not resolved: under Bazel that would lead to the checkout.
ROOT = pathlib.Path(os.path.abspath(__file__)).parent.parent
TENSORFLOW_EXTRAS = {
    "tensorflow": "tensorflow", "tensorflow-cpu": "tensorflow-cpu", "and-cuda": "tensorflow",
    "tensorflow-tpu": "tensorflow-tpu"
}


def _clean_env(**extra):
  """The environment of a child: no PYTHONPATH (it would reach the checkout or the runfiles),
  no user pip configuration or index, TensorFlow's info logs off."""
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
             PIP_NO_CACHE_DIR="1", TF_CPP_MIN_LOG_LEVEL="2")
  env.update(extra)
  return env


def _run(command, cwd, env=None, check=True):
  result = subprocess.run([str(c) for c in command], cwd=cwd, env=env or _clean_env(),
                          capture_output=True, text=True, timeout=300, check=False)
  if check and result.returncode != 0:
    pytest.fail(f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
  return result


def _copy_sources(destination):
  """What `pip install .` reads from a checkout, plus one other top-level package (tests/) that
  must stay out of the wheel."""
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, destination / name)
  shutil.copytree(ROOT / "adam_xla", destination / "adam_xla",
                  ignore=shutil.ignore_patterns("__pycache__", "BUILD", "*.so"))
  (destination / "tests").mkdir()
  shutil.copy(ROOT / "tests" / "__init__.py", destination / "tests" / "__init__.py")


def _poisoned_tensorflow(directory):
  """A `tensorflow` module that fails on import: on the build's path it proves that setuptools
  reads __version__ without importing adam_xla (an isolated build has no TensorFlow)."""
  directory.mkdir()
  (directory / "tensorflow.py"
  ).write_text('raise ImportError("the wheel build imported adam_xla (and so TensorFlow)")\n')
  return directory


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  base = tmp_path_factory.mktemp("wheel")
  source = base / "source"
  source.mkdir()
  _copy_sources(source)
  env = _clean_env(PYTHONPATH=str(_poisoned_tensorflow(base / "poison")))
  _run([
      sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir",
      base / "dist", source
  ], cwd=base, env=env)
  wheels = list((base / "dist").glob("adam_xla-*.whl"))
  assert len(wheels) == 1, wheels
  return wheels[0]


def _workspace_site_packages():
  """This interpreter's installed packages (the workspace venv's), without the checkout or
  Bazel's runfiles, which are also on sys.path."""
  return [
      p for p in sys.path
      if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)
  ]


@pytest.fixture(scope="module")
def new_venv(tmp_path_factory, wheel):
  """(python, site-packages) of a fresh venv holding the wheel, and TensorFlow through a .pth."""
  directory = tmp_path_factory.mktemp("venv") / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", directory], cwd=directory.parent)
  python = directory / "bin" / "python"
  site_packages = pathlib.Path(
      _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
           cwd=directory).stdout.strip())
  (site_packages / "workspace_packages.pth").write_text("\n".join(_workspace_site_packages()) +
                                                        "\n")
  _run([
      sys.executable, "-m", "pip", "--python", python, "install", "--no-index", "--no-deps", wheel
  ], cwd=directory)
  return python, site_packages


# Run in the new venv. Prints one JSON line: the results of the checks that need TensorFlow.
_CHECKS = textwrap.dedent("""\
    import glob, importlib.metadata, json, os, platform, shutil
    import numpy as np
    import tensorflow as tf
    import keras
    import adam_xla
    from adam_xla import cpu_kernel


    def keras_doc_example():
      opt = adam_xla.Adam(learning_rate=0.1)
      var1 = tf.Variable(10.0)
      loss = lambda: (var1 ** 2) / 2.0
      opt.minimize(loss, [var1])
      return float(var1.numpy())


    def train_step():
      keras.utils.set_random_seed(0)
      model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
      before = [w.numpy().copy() for w in model.trainable_variables]
      loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
      step = adam_xla.make_train_step(model, loss, adam_xla.Adam(0.01))
      x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
      metrics = step((tf.constant(x), tf.constant(np.arange(8) % 3)))
      after = [w.numpy() for w in model.trainable_variables]
      return {"loss": float(metrics["loss"]),
              "changed": [bool(np.any(a != b)) for a, b in zip(after, before)]}


    def kernel():
      compiler = (shutil.which(os.environ.get("CXX", "")) or shutil.which("g++")
                  or shutil.which("c++"))
      return {"source": cpu_kernel._SOURCE, "source_exists": os.path.isfile(cpu_kernel._SOURCE),
              "loaded": cpu_kernel.load(), "reason": cpu_kernel._state["reason"],
              "can_build": bool(compiler) and platform.system() == "Linux"
                           and platform.machine() in ("x86_64", "aarch64"),
              "built": glob.glob(os.path.join(os.environ["ADAM_XLA_CACHE_DIR"], "*.so"))}


    metadata = importlib.metadata.metadata("adam_xla")
    print(json.dumps({
        "file": adam_xla.__file__, "version": adam_xla.__version__,
        "metadata_version": importlib.metadata.version("adam_xla"),
        "requires": importlib.metadata.requires("adam_xla"),
        "extras": metadata.get_all("Provides-Extra"),
        "doc_example": keras_doc_example(), "train_step": train_step(), "kernel": kernel()}))
    """)


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
  """A working directory outside the checkout."""
  directory = tmp_path_factory.mktemp("outside").resolve()
  for root in (ROOT.resolve(), pathlib.Path(__file__).resolve().parent.parent):
    assert not directory.is_relative_to(root), (directory, root)
  return directory


@pytest.fixture(scope="module")
def report(new_venv, outside):
  python, _ = new_venv
  script = outside / "checks.py"
  script.write_text(_CHECKS)
  result = _run([python, script], cwd=outside,
                env=_clean_env(ADAM_XLA_CACHE_DIR=str(outside / "kernel_cache")))
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_wheel_holds_the_package_and_the_kernel_source_only(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  assert all(n.startswith(("adam_xla/", "adam_xla-")) for n in names), names
  expected = {
      f"adam_xla/{p.name}" for p in (ROOT / "adam_xla").iterdir()
      if p.suffix == ".py" or p.name == "cpu_kernel.cc"
  }
  assert {n for n in names if n.startswith("adam_xla/")} == expected


def test_installed_package_is_the_wheel_not_the_checkout(report, new_venv):
  _, site_packages = new_venv
  installed = pathlib.Path(report["file"]).resolve()
  assert installed.is_relative_to(site_packages.resolve()), installed
  assert report["version"] == report["metadata_version"] == adam_xla.__version__


def test_keras_documentation_example_takes_one_adam_step(report):
  """`opt.minimize` of var1**2/2 from 10 with lr 0.1: one step of the Keras form of Adam,
  computed here in float64."""
  lr, beta_1, beta_2, epsilon, grad = 0.1, 0.9, 0.999, 1e-7, 10.0
  m, v = (1 - beta_1) * grad, (1 - beta_2) * grad**2
  lr_t = lr * math.sqrt(1 - beta_2) / (1 - beta_1)
  assert report["doc_example"] == pytest.approx(10.0 - lr_t * m / (math.sqrt(v) + epsilon),
                                                rel=1e-6)


def test_one_compiled_train_step_moves_every_weight(report):
  assert math.isfinite(report["train_step"]["loss"])
  assert report["train_step"]["changed"] == [True, True]


def test_cpu_kernel_builds_from_the_installed_source(report, new_venv):
  _, site_packages = new_venv
  kernel = report["kernel"]
  assert kernel["source_exists"]
  assert pathlib.Path(kernel["source"]).resolve().is_relative_to(site_packages.resolve())
  if not kernel["can_build"]:
    pytest.skip(f"no C++ compiler or an unsupported platform: {kernel['reason']}")
  assert kernel["loaded"], kernel["reason"]
  assert len(kernel["built"]) == 1, kernel["built"]


def _extra_requirements(extras):
  return {name: [Requirement(r) for r in requirements] for name, requirements in extras.items()}


def test_pyproject_extras_state_the_import_checks_range():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  extras = _extra_requirements(project["optional-dependencies"])
  assert set(extras) == set(TENSORFLOW_EXTRAS)
  for extra, (requirement,) in extras.items():
    assert requirement.name == TENSORFLOW_EXTRAS[extra]
    assert requirement.specifier == SpecifierSet(environment.TENSORFLOW_VERSIONS), extra
  assert not any(Requirement(r).name.startswith("tensorflow") for r in project["dependencies"])


def test_installed_metadata_is_what_pyproject_declares(report):
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  declared = {str(Requirement(r)) for r in project["dependencies"]}
  for extra, requirements in project["optional-dependencies"].items():
    declared |= {str(Requirement(f'{r}; extra == "{extra}"')) for r in requirements}
  assert {str(Requirement(r)) for r in report["requires"]} == declared
  assert set(report["extras"]) == set(TENSORFLOW_EXTRAS)


def test_pip_check_finds_adam_xla_requirements_met_by_the_workspace(new_venv, outside):
  """The declared ranges accept the pinned keras, absl-py and numpy (pip check of the new
  venv, which sees the workspace's packages through the .pth)."""
  python, _ = new_venv
  result = _run([sys.executable, "-m", "pip", "--python", python, "check"], cwd=outside,
                check=False)
  assert "adam" not in (result.stdout + result.stderr).lower(), result.stdout + result.stderr


@pytest.mark.parametrize("version",
                         ["2.15.1", "2.16.0", "2.20.1", "2.21.0", "2.21.2", "2.22.0", "3.0.0"])
def test_version_check_agrees_with_pip_on_releases(version):
  assert environment.supported(version) == (version
                                            in SpecifierSet(environment.TENSORFLOW_VERSIONS))


@pytest.mark.parametrize("version", ["2.21.0rc0", "2.21.1", "2.21.0-dev20260101"])
def test_version_check_accepts_candidates_and_nightlies_of_supported_releases(version):
  assert environment.supported(version)


@pytest.mark.parametrize("fake, named", [
    ("types.SimpleNamespace(__version__='2.15.1')", "the installed TensorFlow is 2.15.1"),
    ("None", "`import tensorflow` failed")
])
def test_import_names_the_installed_and_supported_versions_and_the_fix(
    new_venv, outside, fake, named):
  """In the new venv, a stand-in for an old or a missing TensorFlow (no real import)."""
  python, _ = new_venv
  code = f"import sys, types; sys.modules['tensorflow'] = {fake}; import adam_xla"
  result = _run([python, "-c", code], cwd=outside, check=False)
  assert result.returncode != 0
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith("ImportError: "), result.stderr
  assert named in last_line and environment.TENSORFLOW_VERSIONS in last_line
  assert f'pip install "tensorflow-cpu{environment.TENSORFLOW_VERSIONS}"' in last_line


if __name__ == "__main__":
  pytest_main.main(__file__)
