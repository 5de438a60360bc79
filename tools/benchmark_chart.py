"""A PNG chart of benchmark checks against their targets, drawn with Pillow.

One horizontal bar per check, its length the measured value relative to the target, scaled so
that 1.0 is exactly on target and a longer bar is better:

    ">= T" targets (higher is better): value / T
    "<= T" targets (lower is better):  T / value

A vertical line at 1.0 marks the target. Bars are green when the check was met and red when it
was not (as the suite decided: its "passed" field). A check without a usable measurement (None,
0, a negative number, NaN or infinity) or with a target that cannot be read gets no bar, only
its label.

    write_chart("benchmark.png", checks, title="...")

where each check is a dict with "suite", "name", "value", "target", "passed" and "unit".
"""

import math
import re

from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

MET_COLOR = (34, 150, 70)
UNMET_COLOR = (210, 45, 45)
WIDTH = 1200

_BACKGROUND = (255, 255, 255)
_STRIPE = (245, 246, 248)
_TEXT = (20, 20, 20)
_MUTED = (110, 110, 110)
_GRID = (222, 222, 222)
_TARGET_LINE = (25, 25, 25)

_MARGIN = 20
_RATIO_SPACE = 60  # right of the plot: room for the ratio printed after a full-length bar
_TITLE_TOP = 14
_ROWS_TOP = 78
_ROW_HEIGHT = 50
_LABEL_TO_BAR = 21
_BAR_HEIGHT = 18
_FOOTER = 66
_MAX_AXIS = 4.0  # bars beyond this many times the target are drawn clipped

_OPERATORS = {">=": ">=", ">": ">=", "\u2265": ">=", "<=": "<=", "<": "<=", "\u2264": "<="}
_TARGET_RE = re.compile(
    r"^\s*(>=|<=|>|<|\u2265|\u2264)\s*"
    r"([+-]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
    r"\s*([A-Za-z%/]*)\s*$")


def parse_target(target):
  """'>= 1.6x' -> ('>=', 1.6); '<= 1.4' -> ('<=', 1.4). ValueError for anything else.

  The operator is one of >=, <=, > or < (> and < count as >= and <=); the threshold a positive
  number, optionally followed by a unit ("x", "ms", ...), which is not interpreted.
  """
  match = _TARGET_RE.match(target) if isinstance(target, str) else None
  if not match:
    raise ValueError(f"cannot read the target {target!r}: expected '>= N' or '<= N' with a "
                     "positive number N and an optional unit, such as '>= 1.6x' or '<= 1.4'")
  threshold = float(match.group(2).replace(",", ""))
  if not math.isfinite(threshold) or threshold <= 0:
    raise ValueError(f"cannot use the target {target!r}: its threshold must be a positive "
                     "finite number (the bar is measured relative to it)")
  return _OPERATORS[match.group(1)], threshold


def is_measured(value):
  """True for a positive finite number: something a bar can be drawn for."""
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value > 0)


def normalized(value, target):
  """The bar length: 1.0 = exactly the target, larger = better; None when not measured.

  Raises ValueError when the target cannot be read (see parse_target).
  """
  operator, threshold = parse_target(target)
  if not is_measured(value):
    return None
  return value / threshold if operator == ">=" else threshold / value


def format_value(value, unit=""):
  """A measured figure for labels and tables: '1.82x', '0.62', '0.0123', '1,234 ms'."""
  if value is None:
    return "not measured"
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  if not math.isfinite(value):
    text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
  elif abs(value) >= 100:
    text = f"{value:,.0f}"
  elif abs(value) >= 0.1 or value == 0:
    text = f"{value:.2f}"
  else:
    text = f"{value:.3g}"
  if not unit:
    return text
  return f"{text}{unit}" if unit in ("x", "%") else f"{text} {unit}"


def _font(size):
  return ImageFont.load_default(size=size)


def _fit(text, font, width):
  """text, cut with '...' so that it is at most `width` pixels wide."""
  if font.getlength(text) <= width:
    return text
  while text and font.getlength(text + "...") > width:
    text = text[:-1]
  return text.rstrip() + "..."


def _axis_max(ratios):
  largest = max(ratios, default=1.0)
  axis = min(max(1.5, largest * 1.08), _MAX_AXIS)
  return math.ceil(axis * 2) / 2


def _describe(check):
  """(ratio or None, the measurement text) of one check."""
  value, target, unit = check.get("value"), check.get("target"), check.get("unit") or ""
  try:
    ratio = normalized(value, target)
  except ValueError:
    measured = f"measured {format_value(value, unit)}" if value is not None else "not measured"
    return None, f"{measured} (target {target!r} not understood)"
  if ratio is None:
    if value is None or value == 0 or (isinstance(value, float) and not math.isfinite(value)):
      return None, f"not measured (target {target})"
    return None, f"measured {format_value(value, unit)}, cannot be drawn (target {target})"
  return ratio, f"measured {format_value(value, unit)} (target {target})"


def write_chart(path, checks, title):
  """Draws one bar per check (see the module docstring) and saves a PNG at `path`."""
  checks = list(checks)
  rows = [(check, *_describe(check)) for check in checks]
  ratios = [ratio for _, ratio, _ in rows if ratio is not None]
  axis_max = _axis_max(ratios)
  rows_bottom = _ROWS_TOP + max(len(rows), 1) * _ROW_HEIGHT
  height = rows_bottom + _FOOTER
  image = Image.new("RGB", (WIDTH, height), _BACKGROUND)
  draw = ImageDraw.Draw(image)
  title_font, label_font, small_font = _font(20), _font(15), _font(13)

  x0, x1 = _MARGIN, WIDTH - _MARGIN - _RATIO_SPACE
  scale = (x1 - x0) / axis_max

  def x_of(ratio):
    return x0 + round(min(ratio, axis_max) * scale)

  draw.text((_MARGIN, _TITLE_TOP), _fit(title, title_font, WIDTH - 2 * _MARGIN),
            font=title_font, fill=_TEXT)

  for i in range(len(rows)):
    if i % 2:
      top = _ROWS_TOP + i * _ROW_HEIGHT
      draw.rectangle([0, top, WIDTH - 1, top + _ROW_HEIGHT - 1], fill=_STRIPE)

  step = 0.5 if axis_max <= 3 else 1.0
  ticks = [k * step for k in range(int(round(axis_max / step)) + 1)]
  for tick in ticks:
    draw.line([(x_of(tick), _ROWS_TOP - 6), (x_of(tick), rows_bottom)], fill=_GRID, width=1)

  target_x = x_of(1.0)
  draw.line([(target_x, _ROWS_TOP - 6), (target_x, rows_bottom)], fill=_TARGET_LINE, width=2)
  label_width = small_font.getlength("target")
  draw.text((target_x - label_width / 2, _ROWS_TOP - 24), "target", font=small_font,
            fill=_TARGET_LINE)

  def label(xy, text, fill, background):
    # On a patch of the row's own background, so that the grid and target lines do not cross it.
    left, top, right, bottom = draw.textbbox(xy, text, font=label_font)
    draw.rectangle([left - 2, top - 2, right + 2, bottom + 2], fill=background)
    draw.text(xy, text, font=label_font, fill=fill)

  if not rows:
    label((x0, _ROWS_TOP + 14), "no checks were reported", _MUTED, _BACKGROUND)
  for i, (check, ratio, measurement) in enumerate(rows):
    top = _ROWS_TOP + i * _ROW_HEIGHT + 4
    background = _STRIPE if i % 2 else _BACKGROUND
    right_width = label_font.getlength(measurement)
    name = f"{check.get('suite', '?')}: {check.get('name', '?')}"
    name = _fit(name, label_font, WIDTH - 2 * _MARGIN - right_width - 24)
    label((x0, top), name, _TEXT, background)
    label((WIDTH - _MARGIN - right_width, top), measurement,
          _TEXT if ratio is not None else _MUTED, background)
    if ratio is None:
      continue
    bar_top = top + _LABEL_TO_BAR
    bar_bottom = bar_top + _BAR_HEIGHT - 1
    end = max(x_of(ratio), x0 + 2)  # a sliver even for a tiny ratio
    color = MET_COLOR if check.get("passed") else UNMET_COLOR
    draw.rectangle([x0, bar_top, end, bar_bottom], fill=color)
    if ratio > axis_max:  # clipped: two white slashes near the end
      for dx in (14, 20):
        draw.line([(end - dx, bar_bottom), (end - dx + 6, bar_top)], fill=_BACKGROUND, width=2)
    draw.text((end + 6, bar_top + 1), f"{ratio:.2f}", font=small_font, fill=_MUTED)
    # The target line stays visible across the bar.
    draw.line([(target_x, bar_top - 3), (target_x, bar_bottom + 3)], fill=_TARGET_LINE, width=2)

  draw.line([(x0, rows_bottom), (x1, rows_bottom)], fill=_MUTED, width=1)
  for tick in ticks:
    text = f"{tick:g}"
    draw.line([(x_of(tick), rows_bottom), (x_of(tick), rows_bottom + 4)], fill=_MUTED)
    draw.text((x_of(tick) - small_font.getlength(text) / 2, rows_bottom + 6), text,
              font=small_font, fill=_MUTED)
  caption = ("bar = measured / target for '>=' targets, target / measured for '<=' targets: "
             "1 = exactly on target, longer = better; green = met, red = not met")
  draw.text((x0, rows_bottom + 28), _fit(caption, small_font, WIDTH - 2 * _MARGIN),
            font=small_font, fill=_MUTED)
  image.save(path, format="PNG")
