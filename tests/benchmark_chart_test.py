"""Tests of tools/bench/chart.py: target parsing, bar lengths, and the drawn PNG's colours."""

import math

import numpy as np
from PIL import Image
import pytest

from tests import pytest_main
from tools.bench import chart


def _check(name, value, target, passed, suite="s", unit="x"):
  return {
      "suite": suite, "name": name, "value": value, "target": target, "passed": passed, "unit": unit
  }


def _pixels(path, color):
  """(ys, xs) of the pixels of exactly this colour."""
  with Image.open(path) as image:
    array = np.asarray(image.convert("RGB"))
  return np.nonzero(np.all(array == np.array(color, dtype=array.dtype), axis=-1))


@pytest.mark.parametrize("text, expected", [
    (">= 1.6x", (">=", 1.6)),
    ("<= 1.4", ("<=", 1.4)),
    (">= 0.5", (">=", 0.5)),
    (">=10x", (">=", 10.0)),
    ("  <=  1.3x ", ("<=", 1.3)),
    ("> 2", (">=", 2.0)),
    ("< .25", ("<=", 0.25)),
    (">= 1e3 steps/s", (">=", 1000.0)),
    (">= 1,000 ms", (">=", 1000.0)),
])
def test_parse_target_accepts_the_forms(text, expected):
  assert chart.parse_target(text) == expected


@pytest.mark.parametrize("text", [
    "", "1.6x", "about 3", ">= x", "== 1", ">= 1.6 x y", "=> 2", ">= 0", "<= -1", ">= inf", None,
    1.5
])
def test_parse_target_rejects_garbage(text):
  with pytest.raises(ValueError, match="target"):
    chart.parse_target(text)


def test_normalized_is_one_on_target_and_larger_when_better():
  assert chart.normalized(1.6, ">= 1.6x") == pytest.approx(1.0)
  assert chart.normalized(3.2, ">= 1.6x") == pytest.approx(2.0)
  assert chart.normalized(0.8, ">= 1.6x") == pytest.approx(0.5)
  assert chart.normalized(0.7, "<= 1.4") == pytest.approx(2.0)  # lower is better
  assert chart.normalized(2.8, "<= 1.4") == pytest.approx(0.5)
  for value in (None, 0, 0.0, -1.0, math.inf, math.nan, True, "1.2"):
    assert chart.normalized(value, ">= 1") is None, value
  with pytest.raises(ValueError):
    chart.normalized(2.0, "garbage")


def test_format_value():
  assert chart.format_value(1.8234, "x") == "1.82x"
  assert chart.format_value(0.6234, "") == "0.62"
  assert chart.format_value(0.01234, "") == "0.0123"
  assert chart.format_value(1234.5, "ms") == "1,234 ms"
  assert chart.format_value(None, "x") == "not measured"
  assert chart.format_value(math.inf, "x") == "infx"


def test_chart_draws_met_green_and_unmet_red(tmp_path):
  checks = [
      _check("met, higher is better", 2.0, ">= 1.6x", True, suite="optimizer"),  # bar 1.25
      _check("not met, lower is better", 2.0, "<= 1.4", False, suite="step"),  # bar 0.7
      _check("not measured", None, ">= 1.3x", False, suite="embedding"),
      _check("infinite", math.inf, ">= 1.3x", True, suite="embedding"),
      _check("zero", 0.0, "<= 1.3x", False, suite="embedding"),
      _check("unreadable target", 2.0, "about 3", True, suite="embedding"),
  ]
  path = tmp_path / "chart.png"
  chart.write_chart(str(path), checks, "test machine, 2 cores; 2026-01-01")
  with Image.open(path) as image:
    assert image.format == "PNG"
    assert image.width == chart.WIDTH
    assert 300 < image.height < 1000
  green_y, green_x = _pixels(path, chart.MET_COLOR)
  red_y, red_x = _pixels(path, chart.UNMET_COLOR)
  # Exactly one bar of each colour (the checks without a usable figure or target get none),
  # in the order of the checks: the met one first.
  assert green_y.size > 100 and red_y.size > 100
  assert green_y.max() < red_y.min()
  assert green_y.max() - green_y.min() < 30 and red_y.max() - red_y.min() < 30
  # Both bars start at the same x (ratio 0); their lengths are in the ratio 1.25 : 0.7.
  assert green_x.min() == red_x.min()
  green_length = green_x.max() - green_x.min()
  red_length = red_x.max() - red_x.min()
  assert green_length / red_length == pytest.approx(1.25 / 0.7, rel=0.03)


def test_chart_without_measurements_has_no_bars(tmp_path):
  path = tmp_path / "chart.png"
  chart.write_chart(str(path), [
      _check("a", None, ">= 2x", True),
      _check("b", 0, "<= 1", False),
      _check("c", math.nan, ">= 2x", False)
  ], "title")
  assert _pixels(path, chart.MET_COLOR)[0].size == 0
  assert _pixels(path, chart.UNMET_COLOR)[0].size == 0


def test_chart_grows_with_checks_and_handles_none_and_huge_ratios(tmp_path):
  paths = [tmp_path / "empty.png", tmp_path / "two.png", tmp_path / "four.png"]
  many = [_check(f"check {i}", 10.0**i, ">= 1x", True) for i in range(4)]  # up to 1000x
  chart.write_chart(str(paths[0]), [], "no checks")
  chart.write_chart(str(paths[1]), many[:2], "two")
  chart.write_chart(str(paths[2]), many, "four " + "very long title " * 40)
  heights = []
  for path in paths:
    with Image.open(path) as image:
      heights.append(image.height)
  assert heights[0] < heights[1] < heights[2]
  # The 1000x bar is clipped to the plot, not drawn off the image.
  _, xs = _pixels(paths[2], chart.MET_COLOR)
  assert xs.max() < chart.WIDTH - 20


if __name__ == "__main__":
  pytest_main.main(__file__)
