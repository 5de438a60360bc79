"""The docs run and match the code.

* Every ```python block of README.md and docs/*.md runs (in a fresh namespace, in a temporary
  directory, with two logical CPU devices so that MirroredStrategy examples have two
  replicas). A block that cannot run here is preceded by `<!-- not run: REASON -->`; a mark
  without a reason, or one not followed by a python block, fails. Every block names its
  language, so that a Python block cannot go unchecked by being unlabelled.
* The docstring examples (`>>>`) of every adam_xla module pass as doctests.
* A table preceded by `<!-- signature: NAME [NAME...] -->` lists exactly the parameters of
  those callables (a class: its constructor; `**kwargs` left out), each with its default (a
  `default` column) and "(keyword only)" exactly where the parameter is keyword-only. A table
  preceded by `<!-- flags: CONFIG_CLASS -->` names exactly the trainer flags of that config
  dataclass; `<!-- members: NAME -->`: every member it lists exists, with the parameters
  listed (optional parameters may be left out). Every table of arguments or flags must carry
  such a mark.
* Every `./bazelw run //trainers:...` command in a shell block parses and passes the trainer's
  flag validation; every `//tools:benchmark -- ...` command parses into the suites' configs.
* Relative links resolve (files, and headings of .md files), and so do the repository paths
  the pages name (in a checkout); the README stays a summary and holds the test command CI
  runs.
"""

import ast
import collections
import copy
import dataclasses
import doctest
import importlib
import inspect
import os
import pathlib
import re
import shlex

from absl import app
from absl import flags
import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import logical_cpus
from tests import pytest_main
from trainers.common import config as common_config

logical_cpus.require(2)  # before anything starts the TF runtime

import adam_xla  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = pathlib.Path(os.path.abspath(__file__)).parent.parent
README = ROOT / "README.md"
README_MAX_BYTES = 12 * 1024
PAGES = [README] + sorted((ROOT / "docs").glob("*.md"))
LANGUAGES = ("python", "sh", "bash", "text", "yaml", "json")
# Marks stand alone on the line before their block or table.
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->")
MARK = re.compile(r"<!--\s*(signature|flags|members):\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```(.*)$")
LINK = re.compile(r"\]\(([^)\s]+)\)")


@dataclasses.dataclass
class Block:
  page: pathlib.Path
  line: int  # of the opening fence, 1-based
  language: str
  code: str
  not_run: str = None  # the reason given, or None


@dataclasses.dataclass
class Table:
  page: pathlib.Path
  line: int
  header: list
  rows: list  # each a list of cells
  mark: tuple = None  # (kind, names)


def _where(item):
  return f"{item.page.relative_to(ROOT)}:{item.line}"


def _parse(page):
  """The page's code blocks and tables (tables outside code blocks), with their marks."""
  lines = page.read_text(encoding="utf-8").splitlines()
  blocks, tables, pending, stray = [], [], None, []
  i = 0
  while i < len(lines):
    line = lines[i]
    fence = FENCE.match(line)
    if fence:
      start, language = i, fence.group(2).strip()
      i += 1
      body = []
      while i < len(lines) and not lines[i].strip().startswith("```"):
        body.append(lines[i][len(fence.group(1)):])
        i += 1
      blocks.append(
          Block(page, start + 1, language, "\n".join(body) + "\n",
                pending[1] if pending and pending[0] == "not run" else None))
      if pending and pending[0] != "not run":
        stray.append((page, pending[2], "a table mark followed by a code block"))
      pending = None
    elif line.startswith("|"):
      start, rows = i, []
      while i < len(lines) and lines[i].startswith("|"):
        rows.append([cell.strip() for cell in lines[i].strip().strip("|").split("|")])
        i += 1
      i -= 1
      mark = pending[:2] if pending and pending[0] != "not run" else None
      if pending and pending[0] == "not run":
        stray.append((page, pending[2], "a not-run mark followed by a table"))
      tables.append(Table(page, start + 1, rows[0], rows[2:], mark))
      pending = None
    elif NOT_RUN.fullmatch(line.strip()):
      pending = ("not run", NOT_RUN.fullmatch(line.strip()).group(1), i + 1)
    elif MARK.fullmatch(line.strip()):
      match = MARK.fullmatch(line.strip())
      pending = (match.group(1), match.group(2).split(), i + 1)
    elif line.strip() and pending:
      stray.append((page, pending[2], f"a '{pending[0]}' mark not followed by its block"))
      pending = None
    i += 1
  if pending:
    stray.append((page, pending[2], f"a '{pending[0]}' mark at the end of the page"))
  return blocks, tables, stray


_PARSED = {page: _parse(page) for page in PAGES}
BLOCKS = [block for page in PAGES for block in _PARSED[page][0]]
TABLES = [table for page in PAGES for table in _PARSED[page][1]]
PYTHON_BLOCKS = [block for block in BLOCKS if block.language == "python"]


def test_pages_are_found():
  assert README.exists()
  assert len(PAGES) > 1, "no docs/*.md found next to the README"
  assert PYTHON_BLOCKS, "no python blocks found"


def test_every_block_names_a_known_language():
  bad = [f"{_where(b)}: ```{b.language}" for b in BLOCKS if b.language not in LANGUAGES]
  assert not bad, f"label code blocks with one of {LANGUAGES}: {bad}"


def test_marks_are_well_formed():
  stray = [
      f"{p.relative_to(ROOT)}:{line}: {what}" for page in PAGES
      for p, line, what in _PARSED[page][2]
  ]
  assert not stray, stray
  unexplained = [_where(b) for b in BLOCKS if b.not_run is not None and not b.not_run]
  assert not unexplained, f"'not run' marks without a reason: {unexplained}"
  not_python = [_where(b) for b in BLOCKS if b.not_run is not None and b.language != "python"]
  assert not not_python, f"'not run' marks on blocks that are not python: {not_python}"


class _MirroredStrategy(tf.distribute.MirroredStrategy):
  """MirroredStrategy reducing through one device unless told otherwise.

  TensorFlow keys collective all-reduce groups and instances per process, so the collectives
  of two MirroredStrategy objects made by two blocks in one process collide ("Shape mismatch
  in the collective instance ..."); a user's program makes one.
  """

  def __init__(self, devices=None, cross_device_ops=None):
    super().__init__(devices, cross_device_ops or tf.distribute.ReductionToOneDevice())


@pytest.fixture
def fresh_state(tmp_path, monkeypatch):
  """A temporary working directory; Keras' global state reset after the block."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(tf.distribute, "MirroredStrategy", _MirroredStrategy)
  yield
  keras.mixed_precision.set_global_policy("float32")
  keras.backend.clear_session()


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=_where)
def test_python_block_runs(block, fresh_state):  # pylint: disable=redefined-outer-name
  del fresh_state
  if block.not_run:
    pytest.skip(f"not run: {block.not_run}")
  namespace = {"__name__": "__docs__"}
  exec(compile(block.code, _where(block), "exec"), namespace)  # pylint: disable=exec-used


def _modules():
  return sorted(path.stem for path in (ROOT / "adam_xla").glob("*.py") if path.stem != "__init__")


@pytest.mark.parametrize("name", ["__init__"] + _modules())
def test_docstring_examples(name):
  module = adam_xla if name == "__init__" else importlib.import_module(f"adam_xla.{name}")
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
  # The examples show NumPy scalars as NumPy 1 printed them (9.9, not np.float32(9.9)).
  with np.printoptions(legacy="1.25"):
    for test in doctest.DocTestFinder().find(
        module, globs={"tf": tf, "adam_xla": adam_xla, "np": np, "keras": keras}):
      runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


def test_docstring_examples_exist():
  found = doctest.DocTestFinder().find(importlib.import_module("adam_xla.optimizer"))
  assert sum(len(test.examples) for test in found) >= 5


def _resolve(dotted):
  module, _, name = dotted.rpartition(".")
  return getattr(importlib.import_module(module), name)


def _first_code(cell):
  match = re.match(r"`([^`]+)`", cell)
  assert match, f"the first cell {cell!r} does not start with a `name`"
  return match.group(1)


def _parameters(names):
  """Name -> inspect.Parameter of the callables `names`, `self` and **kwargs left out; a
  dataclass's fields count as keyword-only (they arrive through **kwargs)."""
  parameters = {}
  for dotted in names:
    target = _resolve(dotted)
    signature = inspect.signature(target.__init__ if inspect.isclass(target) and
                                  not dataclasses.is_dataclass(target) else target)
    for parameter in signature.parameters.values():
      if parameter.name == "self" or parameter.kind == parameter.VAR_KEYWORD:
        continue
      if dataclasses.is_dataclass(target):
        parameter = parameter.replace(kind=parameter.KEYWORD_ONLY)
      parameters[parameter.name] = parameter
  return parameters


SIGNATURE_TABLES = [t for t in TABLES if t.mark and t.mark[0] == "signature"]
FLAG_TABLES = [t for t in TABLES if t.mark and t.mark[0] == "flags"]
MEMBER_TABLES = [t for t in TABLES if t.mark and t.mark[0] == "members"]


def test_argument_and_flag_tables_are_marked():
  unmarked = [
      _where(t) for t in TABLES
      if not t.mark and (t.header[0].lower() in ("argument", "arguments", "flag", "flags") or
                         "flags" in [cell.lower() for cell in t.header])
  ]
  assert not unmarked, f"tables of arguments or flags without a signature/flags mark: {unmarked}"
  assert {t.mark[1][0] for t in SIGNATURE_TABLES} >= {"adam_xla.Adam", "adam_xla.make_train_step"}


@pytest.mark.parametrize("table", SIGNATURE_TABLES, ids=_where)
def test_signature_table(table):
  actual = _parameters(table.mark[1])
  documented = {_first_code(row[0]): row for row in table.rows}
  assert sorted(documented) == sorted(actual), (
      f"{_where(table)}: missing from the table {sorted(set(actual) - set(documented))}, "
      f"not in the signature {sorted(set(documented) - set(actual))}")
  header = [cell.lower() for cell in table.header]
  for name, row in documented.items():
    parameter = actual[name]
    keyword_only = "(keyword only)" in row[0]
    assert keyword_only == (parameter.kind == parameter.KEYWORD_ONLY), (
        f"{_where(table)}: `{name}` is {parameter.kind.description}")
    if "default" in header:
      cell = row[header.index("default")]
      if parameter.default is inspect.Parameter.empty:
        assert cell == "required", f"{_where(table)}: `{name}` has no default"
      else:
        assert ast.literal_eval(cell) == parameter.default, (
            f"{_where(table)}: `{name}` defaults to {parameter.default!r}, not {cell}")


@pytest.mark.parametrize("table", FLAG_TABLES, ids=_where)
def test_flag_table(table):
  fields = {f.name for f in dataclasses.fields(_resolve(table.mark[1][0]))}
  documented = set(re.findall(r"`--(\w+)", " ".join(" ".join(row) for row in table.rows)))
  assert documented == fields, (f"{_where(table)}: missing {sorted(fields - documented)}, "
                                f"not flags {sorted(documented - fields)}")


@pytest.mark.parametrize("table", MEMBER_TABLES, ids=_where)
def test_member_table(table):
  owner = _resolve(table.mark[1][0])
  source = inspect.getsource(owner)
  for row in table.rows:
    for entry in re.findall(r"`([^`]+)`", row[0]):
      match = re.fullmatch(r"(\w+)(?:\((.*)\))?", entry)
      assert match, f"{_where(table)}: {entry} is not a name or a call"
      name, arguments = match.groups()
      assert hasattr(owner, name) or re.search(rf"\bself\.{name}\s*=", source), (
          f"{_where(table)}: {owner.__name__} has no member `{name}`")
      if arguments is not None:
        listed = [a.strip() for a in arguments.split(",") if a.strip()]
        parameters = [
            p for p in inspect.signature(getattr(owner, name)).parameters.values()
            if p.name != "self"
        ]
        required = [
            p.name for p in parameters
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        in_order = [p.name for p in parameters if p.name in listed]
        assert in_order == listed and set(required) <= set(listed), (
            f"{_where(table)}: {entry}: {name} takes {[p.name for p in parameters]}")


def _slug(heading):
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def _anchors(page):
  text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
  return {_slug(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def test_relative_links_resolve():
  broken = []
  for page in PAGES:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for target in LINK.findall(text):
      if re.match(r"[a-z]+:", target):
        continue
      path, _, anchor = target.partition("#")
      resolved = (page.parent / path) if path else page
      if not resolved.exists():
        broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
      elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
        broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
  assert not broken, broken


TRAINER_CONFIGS = {
    "//trainers:imagenet": "trainers.image_classification.config.ImagenetConfig",
    "//trainers:embedding": "trainers.ctr.config.EmbeddingConfig"
}


def _trainer_commands():
  """(block, target, flags) of every `./bazelw run //trainers:...` command in a shell block."""
  for block in BLOCKS:
    if block.language not in ("sh", "bash"):
      continue
    for line in block.code.replace("\\\n", " ").splitlines():
      if not line.strip().startswith("./bazelw run //trainers:"):
        continue
      words = shlex.split(line, comments=True)
      if words[2] in TRAINER_CONFIGS:
        yield block, words[2], words[4:] if words[3:4] == ["--"] else []


TRAINER_COMMANDS = list(_trainer_commands())


@pytest.mark.parametrize("command", TRAINER_COMMANDS,
                         ids=[f"{_where(b)}:{t}" for b, t, _ in TRAINER_COMMANDS])
def test_trainer_commands_are_valid(command):
  """Each trainer command's flags parse and pass the trainer's validation, as its main does
  before any work."""
  block, target, arguments = command
  config_class = _resolve(TRAINER_CONFIGS[target])
  flag_values = flags.FlagValues()
  common_config.define_flags(config_class, collections.defaultdict(str), flag_values)
  try:
    flag_values(["trainer"] + arguments)
    config = common_config.from_flags(config_class, flag_values)
    if hasattr(config, "train_epochs") and config.train_steps is config.train_epochs is None:
      config = dataclasses.replace(config, train_steps=1)  # main's default step count
    config.validate()
  except (flags.Error, ValueError) as error:
    pytest.fail(f"{_where(block)}: {target} {' '.join(arguments)}: {error}")


def test_trainer_commands_are_found():
  assert {target for _, target, _ in TRAINER_COMMANDS} == set(TRAINER_CONFIGS)


BENCHMARK_COMMAND = re.compile(r"(?:\./bazelw run )?//tools:benchmark -- ([^`\n]*)")


def _benchmark_commands():
  """(page, flags) of every `//tools:benchmark -- ...` command, in code blocks or inline."""
  for page in PAGES:
    for match in BENCHMARK_COMMAND.finditer(page.read_text(encoding="utf-8")):
      words = shlex.split(match.group(1).replace("...", "x"), comments=True)
      yield page.relative_to(ROOT), [w for w in words if w.startswith("--")]


BENCHMARK_COMMANDS = list(_benchmark_commands())


def test_benchmark_commands_are_valid():
  """Each benchmark command the docs quote parses into the suites' configs, as its main does
  before it runs anything."""
  from tools import benchmark  # pylint: disable=import-outside-toplevel
  assert len(BENCHMARK_COMMANDS) > 5
  bad = []
  for page, arguments in BENCHMARK_COMMANDS:
    flag_values = flags.FlagValues()  # copies: parsing here leaves the process's flags alone
    for flag in flags.FLAGS.get_flags_for_module(benchmark):
      flag_values[flag.name] = copy.deepcopy(flag)
    try:
      flag_values(["benchmark"] + arguments)
      benchmark.config_from_flags(flag_values)
    except (flags.Error, app.UsageError, ValueError) as error:
      bad.append(f"{page}: {' '.join(arguments)}: {error}")
  assert not bad, bad


REPO_PATH = re.compile(r"`((?:adam_xla|tools|trainers|tests|docs|third_party|\.ci)/[\w./*-]*"
                       r"|requirements[\w.-]*\.(?:in|txt)|pyproject\.toml|MODULE\.bazel)`")


def test_repository_paths_exist():
  if not (ROOT / "WORKSPACE").exists():
    pytest.skip("not a checkout (a Bazel test holds only its own files)")
  missing = sorted({
      f"{page.relative_to(ROOT)}: {path}" for page in PAGES
      for path in REPO_PATH.findall(page.read_text(encoding="utf-8"))
      if not list(ROOT.glob(path.rstrip("/")))
  })
  assert not missing, missing


def test_readme_is_a_summary_with_the_ci_test_command():
  assert len(README.read_bytes()) <= README_MAX_BYTES
  commands = [b.code for b in BLOCKS if b.page == README and b.language == "sh"]
  assert commands and "./bazelw test //...  " in commands[0], commands[:1]
  ci = ROOT / ".ci" / "run"  # not among a Bazel test's files: checked from a checkout
  if ci.exists():
    assert "./bazelw test //..." in ci.read_text(encoding="utf-8")


if __name__ == "__main__":
  pytest_main.main(__file__)
