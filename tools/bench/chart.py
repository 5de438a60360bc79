"""A PNG of benchmark checks against their targets: one bar per check, drawn with Pillow.

A bar's length is the measured value relative to its target, 1.0 on target and longer when
better: value / T for ">= T", T / value for "<= T". A line at 1.0 marks the target; bars are
green when the check was met, red when not (the suite's "passed"). A check without a usable
measurement (None, 0, negative, NaN, infinite) or with an unreadable target gets its label
only. Each check is a dict with "suite", "name", "value", "target", "passed" and "unit".
"""

import math
import re

from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

MET_COLOR, UNMET_COLOR = (34, 150, 70), (210, 45, 45)
WIDTH = 1200
_WHITE, _STRIPE, _TEXT, _MUTED, _GRID = ((255, 255, 255), (245, 246, 248), (20, 20, 20),
                                         (110, 110, 110), (222, 222, 222))
_MARGIN, _RATIO_SPACE, _ROWS_TOP, _ROW_HEIGHT, _BAR_TOP, _BAR_HEIGHT, _FOOTER = (20, 60, 78, 50, 25,
                                                                                 18, 66)
_MAX_AXIS = 4.0  # bars beyond this many times the target are cut at the axis's end
_OPERATORS = {">=": ">=", ">": ">=", "\u2265": ">=", "<=": "<=", "<": "<=", "\u2264": "<="}
_TARGET = re.compile(r"^\s*(>=|<=|>|<|\u2265|\u2264)\s*"
                     r"([+-]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z%/]*)\s*$")


def parse_target(target):
  """'>= 1.6x' -> ('>=', 1.6), '< 2 ms' -> ('<=', 2.0); ValueError for anything else (the
  threshold must be a positive number; a unit after it is not interpreted)."""
  match = _TARGET.match(target) if isinstance(target, str) else None
  threshold = float(match.group(2).replace(",", "")) if match else None
  if threshold is None or not 0 < threshold < math.inf:
    raise ValueError(f"cannot read the target {target!r}: expected '>= N' or '<= N' with a "
                     "positive number N and an optional unit, such as '>= 1.6x' or '<= 1.4'")
  return _OPERATORS[match.group(1)], threshold


def normalized(value, target):
  """The bar length, or None when nothing was measured; ValueError for a bad target."""
  operator, threshold = parse_target(target)
  if (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf):
    return None
  return value / threshold if operator == ">=" else threshold / value


def format_value(value, unit=""):
  """'1.82x', '0.62', '0.0123', '1,234 ms'; 'not measured' for None."""
  if value is None:
    return "not measured"
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  text = (f"{value}" if not math.isfinite(value) else f"{value:,.0f}" if abs(value) >= 100 else
          f"{value:.2f}" if abs(value) >= 0.1 or value == 0 else f"{value:.3g}")
  return text if not unit else f"{text}{unit}" if unit in ("x", "%") else f"{text} {unit}"


def _fit(text, font, width):
  """`text`, cut with '...' to at most `width` pixels."""
  length = font.getlength(text)
  if length <= width:
    return text
  text = text[:int(len(text) * width / length) + 1]  # about right; then a character at a time
  while text and font.getlength(text + "...") > width:
    text = text[:-1]
  return text.rstrip() + "..."


def _describe(check):
  """(bar length or None, the text right of the label)."""
  value, target, unit = check.get("value"), check.get("target"), check.get("unit") or ""
  try:
    ratio = normalized(value, target)
  except ValueError:
    return None, f"measured {format_value(value, unit)} (target {target!r} not understood)"
  if ratio is None:
    return None, f"not measured (target {target})" if value in (None, 0) or (
        isinstance(value, float) and not math.isfinite(value)) else (
            f"measured {format_value(value, unit)}, cannot be drawn (target {target})")
  return ratio, f"measured {format_value(value, unit)} (target {target})"


def write_chart(path, checks, title):
  """Draws one bar per check (see the module docstring) into a PNG at `path`."""
  rows = [(check, *_describe(check)) for check in checks]
  axis = math.ceil(
      min(max(1.5, 1.08 * max((r for _, r, _ in rows if r), default=1)), _MAX_AXIS) * 2) / 2
  bottom = _ROWS_TOP + max(len(rows), 1) * _ROW_HEIGHT
  image = Image.new("RGB", (WIDTH, bottom + _FOOTER), _WHITE)
  draw = ImageDraw.Draw(image)
  big, font, small = (ImageFont.load_default(size=size) for size in (20, 15, 13))
  x0, x1 = _MARGIN, WIDTH - _MARGIN - _RATIO_SPACE
  x_of = lambda ratio: x0 + round(min(ratio, axis) * (x1 - x0) / axis)
  draw.text((_MARGIN, 14), _fit(title, big, WIDTH - 2 * _MARGIN), font=big, fill=_TEXT)
  for i in range(1, len(rows), 2):
    draw.rectangle([0, _ROWS_TOP + i * _ROW_HEIGHT, WIDTH, _ROWS_TOP + (i + 1) * _ROW_HEIGHT - 1],
                   fill=_STRIPE)
  step = 0.5 if axis <= 3 else 1.0
  for k in range(int(axis / step) + 1):
    x = x_of(k * step)
    draw.line([(x, _ROWS_TOP - 6), (x, bottom + 4)], fill=_GRID)
    draw.text((x - small.getlength(f"{k * step:g}") / 2, bottom + 6), f"{k * step:g}", font=small,
              fill=_MUTED)
  draw.text((x_of(1) - small.getlength("target") / 2, _ROWS_TOP - 24), "target", font=small,
            fill=_TEXT)
  draw.line([(x_of(1), _ROWS_TOP - 6), (x_of(1), bottom)], fill=_TEXT, width=2)

  def label(xy, text, fill, background):  # on the row's own colour, over the grid lines
    draw.rectangle(draw.textbbox(xy, text, font=font), fill=background)
    draw.text(xy, text, font=font, fill=fill)

  if not rows:
    label((x0, _ROWS_TOP + 14), "no checks were reported", _MUTED, _WHITE)
  for i, (check, ratio, measured) in enumerate(rows):
    top, background = _ROWS_TOP + i * _ROW_HEIGHT + 4, _STRIPE if i % 2 else _WHITE
    right = font.getlength(measured)
    label((x0, top),
          _fit(f"{check.get('suite', '?')}: {check.get('name', '?')}", font,
               WIDTH - 2 * _MARGIN - right - 24), _TEXT, background)
    label((WIDTH - _MARGIN - right, top), measured, _TEXT if ratio else _MUTED, background)
    if ratio:
      bar, end = top + _BAR_TOP, max(x_of(ratio), x0 + 2)
      draw.rectangle([x0, bar, end, bar + _BAR_HEIGHT - 1],
                     fill=MET_COLOR if check.get("passed") else UNMET_COLOR)
      draw.text((end + 6, bar + 1), f"{ratio:.2f}", font=small, fill=_MUTED)
      draw.line([(x_of(1), bar - 3), (x_of(1), bar + _BAR_HEIGHT + 2)], fill=_TEXT, width=2)
  draw.text(
      (x0, bottom + 28),
      _fit(
          "bar = measured / target for '>=' targets, target / measured for '<=' targets: 1 = on "
          "target, longer = better; green = met, red = not met", small,
          WIDTH - 2 * _MARGIN), font=small, fill=_MUTED)
  image.save(path, format="PNG")
