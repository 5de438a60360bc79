"""Plain-text tables for the benchmark tools' reports."""


def table(header, lines, left=2):
  """Columns padded to their widest cell; the first `left` columns left-aligned (names), the
  rest right-aligned (figures); a rule under the header."""
  widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
  fmt = lambda cells: "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                                for i, (c, w) in enumerate(zip(cells, widths)))
  return "\n".join([fmt(header), "-" * len(fmt(header))] + [fmt(line) for line in lines])
