"""Tests of the trainers' shared config code (trainers/common/config.py): flags from a config
dataclass and back, and the shared checks' messages."""

import dataclasses
from typing import Optional, Tuple

from absl import flags
import pytest

from tests import pytest_main
from trainers.common import config


@dataclasses.dataclass(frozen=True)
class _Example:
  rate: float = 0.5
  clip: Optional[float] = None
  steps: int = 3
  limit: Optional[int] = None
  name: str = "x"
  path: Optional[str] = None
  fast: bool = False
  sizes: Tuple[int, ...] = (4, 5)


_HELP = {f.name: f"help for {f.name}" for f in dataclasses.fields(_Example)}


def _parse(argv):
  flag_values = flags.FlagValues()
  config.define_flags(_Example, _HELP, flag_values)
  flag_values(["program"] + argv)
  return config.from_flags(_Example, flag_values)


def test_defaults_round_trip():
  assert _parse([]) == _Example()


def test_every_field_type_parses_from_the_command_line():
  parsed = _parse([
      "--rate=0.25", "--clip=2", "--steps=7", "--limit=9", "--name=y", "--path=/p", "--fast",
      "--sizes=10,20,30"
  ])
  assert parsed == _Example(rate=0.25, clip=2.0, steps=7, limit=9, name="y", path="/p", fast=True,
                            sizes=(10, 20, 30))
  assert _parse(["--sizes="]).sizes == ()


def test_flag_type_errors_name_the_flag():
  with pytest.raises(flags.IllegalFlagValueError, match="steps"):
    _parse(["--steps=many"])
  with pytest.raises(ValueError, match=r"--sizes item 'ten' is not valid: expected an integer"):
    _parse(["--sizes=10,ten"])


def test_help_is_required_for_every_field():
  with pytest.raises(KeyError, match="sizes"):
    config.define_flags(_Example, {k: v for k, v in _HELP.items() if k != "sizes"},
                        flags.FlagValues())


def test_check_names_flag_value_and_accepted_values():
  config.check(True, "x", 1, "anything")
  with pytest.raises(ValueError, match=r"^--mode='b' is not valid: expected one of a, c\.$"):
    config.check(False, "mode", "b", config.one_of(["a", "c"]))


if __name__ == "__main__":
  pytest_main.main(__file__)
