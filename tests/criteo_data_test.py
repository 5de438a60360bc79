"""Tests of trainers/ctr/criteo_data.py: parsing, missing values, hashing and bad lines."""

import dataclasses
import gzip
import re

import numpy as np
import pytest
import tensorflow as tf

from tests import pytest_main
from trainers.ctr import criteo_data

SIZES = (100,) * 26


def _line(label=1, ints=None, cats=None):
  ints = [str(i) for i in range(13)] if ints is None else ints
  cats = [f"{i:08x}" for i in range(26)] if cats is None else cats
  return "\t".join([str(label)] + list(ints) + list(cats))


def _write(path, lines):
  text = "".join(line + "\n" for line in lines).encode()
  if path.endswith(".gz"):
    with gzip.open(path, "wb") as f:
      f.write(text)
  else:
    with open(path, "wb") as f:
      f.write(text)
  return path


def _read_all(config):
  features, labels = [], []
  for batch, label in criteo_data.dataset(config):
    features.append(batch)
    labels.append(label.numpy())
  return ({key: np.concatenate([f[key].numpy() for f in features]) for key in features[0]},
          np.concatenate(labels))


def _good_lines(n, seed=0):
  rng = np.random.default_rng(seed)
  return [
      _line(int(rng.integers(2)), [str(v) for v in rng.integers(-3, 1000, 13)],
            [f"{v:08x}" for v in rng.integers(0, 2**32, 26)]) for _ in range(n)
  ]


@pytest.mark.parametrize("suffix", [".tsv", ".tsv.gz"])
def test_shapes_dtypes_and_values(tmp_path, suffix):
  lines = [
      _line(1, ["0", "-2", "", "7"] + ["1"] * 9,
            ["0000000a", "FFFFFFFF", "", "00000063"] + ["00000001"] * 22),
      _line(0)
  ] * 3
  path = _write(str(tmp_path / ("day_0" + suffix)), lines)
  config = criteo_data.CriteoConfig(files=(path,), table_sizes=SIZES, batch_size=2)
  ds = criteo_data.dataset(config)
  assert ds.element_spec[0]["dense"].shape.as_list() == [2, 13]
  assert ds.element_spec[0]["sparse"].shape.as_list() == [2, 26]
  assert ds.element_spec[0]["dense"].dtype == tf.float32
  assert ds.element_spec[0]["sparse"].dtype == tf.int64
  assert ds.element_spec[1].dtype == tf.float32
  features, labels = _read_all(config)
  np.testing.assert_array_equal(labels, [1, 0] * 3)
  dense, sparse = features["dense"], features["sparse"]
  # log(1 + max(x, 0)); negative and missing -> 0.
  np.testing.assert_allclose(dense[0, :4], [0, 0, 0, np.log(8)], rtol=1e-6)
  np.testing.assert_allclose(dense[1], np.log1p(np.arange(13)), rtol=1e-6)
  # 1 + value mod 99; missing -> 0.
  np.testing.assert_array_equal(sparse[0, :4], [11, 1 + 0xFFFFFFFF % 99, 0, 1])
  np.testing.assert_array_equal(sparse[1], 1 + np.arange(26) % 99)


def test_gzip_and_plain_read_the_same(tmp_path):
  lines = _good_lines(50)
  plain = _write(str(tmp_path / "a.tsv"), lines)
  zipped = _write(str(tmp_path / "a.tsv.gz"), lines)
  a = _read_all(criteo_data.CriteoConfig(files=(plain,), table_sizes=SIZES, batch_size=7))
  b = _read_all(criteo_data.CriteoConfig(files=(zipped,), table_sizes=SIZES, batch_size=7))
  assert len(a[1]) == 49  # drop_remainder
  np.testing.assert_array_equal(a[0]["sparse"], b[0]["sparse"])
  np.testing.assert_array_equal(a[1], b[1])


def _gzip_members(text):
  """Two gzip members back to back, as `cat a.gz b.gz` makes (gzip reads it as one file)."""
  middle = len(text) // 2 + 3  # within a line
  return gzip.compress(text[:middle]) + gzip.compress(text[middle:])


@pytest.mark.parametrize("name, encode", [
    ("members.tsv.gz", _gzip_members),
    ("no_final_newline.tsv.gz", lambda text: gzip.compress(text[:-1])),
    ("crlf.tsv", lambda text: text.replace(b"\n", b"\r\n")),
])
def test_files_as_found_in_the_wild_read_as_plain_text(tmp_path, name, encode):
  lines = _good_lines(30)
  plain = _write(str(tmp_path / "plain.tsv"), lines)
  other = tmp_path / name
  other.write_bytes(encode("".join(line + "\n" for line in lines).encode()))
  want = _read_all(criteo_data.CriteoConfig(files=(plain,), table_sizes=SIZES, batch_size=5))
  config = criteo_data.CriteoConfig(files=(str(other),), table_sizes=SIZES, batch_size=5)
  got = _read_all(config)
  np.testing.assert_array_equal(got[0]["sparse"], want[0]["sparse"])
  np.testing.assert_array_equal(got[0]["dense"], want[0]["dense"])
  np.testing.assert_array_equal(got[1], want[1])
  assert criteo_data.count_bad_records(config) == 0


def test_remote_paths_and_globs_through_gfile(tmp_path):
  """ram:// is TensorFlow's in-memory file system: a stand-in for gs:// reached the same way,
  through tf.io.gfile and the tf.data file readers."""
  root = f"ram://criteo-{tmp_path.name}"
  tf.io.gfile.makedirs(root)
  local = []
  for day in range(2):
    lines = _good_lines(20, seed=day)
    local.append(_write(str(tmp_path / f"day_{day}.gz"), lines))
    with tf.io.gfile.GFile(f"{root}/day_{day}.gz", "wb") as f:
      f.write(gzip.compress("".join(line + "\n" for line in lines).encode()))
  remote = criteo_data.CriteoConfig(files=(f"{root}/day_*.gz",), table_sizes=SIZES, batch_size=4)
  assert criteo_data.list_files(remote) == [f"{root}/day_0.gz", f"{root}/day_1.gz"]
  got = _read_all(remote)
  want = _read_all(dataclasses.replace(remote, files=tuple(local)))
  np.testing.assert_array_equal(got[0]["sparse"], want[0]["sparse"])
  np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("content, shown", [(b"0\t1\t2", "30 09"), (b"", "nothing (empty file)")])
def test_gz_file_that_is_not_gzip_is_named_before_reading(tmp_path, content, shown):
  path = tmp_path / "day_0.gz"
  path.write_bytes(content)
  config = criteo_data.CriteoConfig(files=(str(path),), table_sizes=SIZES, batch_size=2)
  message = f"'{path}' ends in .gz but is not gzip: it starts with {shown}, not 1f 8b"
  with pytest.raises(ValueError, match=re.escape(message)):
    criteo_data.dataset(config)
  with pytest.raises(ValueError, match=re.escape(message)):
    criteo_data.count_bad_records(config)


def test_truncated_gzip_stops_at_its_cut_line_naming_it(tmp_path):
  lines = _good_lines(2000)
  path = tmp_path / "day_3.gz"
  path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode())[:-3000])
  config = criteo_data.CriteoConfig(files=(str(path),), table_sizes=SIZES, batch_size=2)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=re.escape(str(path)) + r":\d+: expected 40 tab-separated fields"):
    _read_all(config)


def test_hashing_in_range_and_glob(tmp_path):
  sizes = tuple(range(2, 28))
  for i in range(3):
    _write(str(tmp_path / f"part-{i}.tsv"), _good_lines(40, seed=i))
  config = criteo_data.CriteoConfig(files=(str(tmp_path / "part-*.tsv"),), table_sizes=sizes,
                                    batch_size=10, shuffle=True, seed=1)
  features, labels = _read_all(config)
  assert len(labels) == 120
  sparse = features["sparse"]
  assert (sparse >= 1).all() and (sparse < np.array(sizes)).all()
  assert len(np.unique(sparse[:, -1])) > 15  # spread over the 27-row table
  assert np.isfinite(features["dense"]).all() and (features["dense"] >= 0).all()


def test_sharded_by_input_pipeline(tmp_path):
  for i in range(4):
    _write(str(tmp_path / f"part-{i}.tsv"), [_line(i % 2, cats=[f"{i:08x}"] * 26)] * 8)
  config = criteo_data.CriteoConfig(files=(str(tmp_path / "part-*"),), table_sizes=SIZES,
                                    batch_size=4)
  seen = []
  for pipeline in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                         num_replicas_in_sync=2)
    batches = list(criteo_data.dataset(config, context))
    assert all(b[0]["sparse"].shape == (2, 26) for b in batches)  # per-replica batch
    seen.append({int(v) for b in batches for v in b[0]["sparse"][:, 0].numpy()})
  assert seen == [{1, 3}, {2, 4}]


@pytest.mark.parametrize("bad, message", [
    ("1\t2\t3", "expected 40 tab-separated fields"),
    (_line(2), "label is not 0 or 1: `2`"),
    (_line(1, ["1"] * 4 + ["1.5"] + ["1"] * 8), "integer feature I5 is not an integer: `1.5`"),
    (_line(1, cats=["0000000a"] * 25 + ["xyz"]), "categorical feature C26 is not a hex"),
], ids=["fields", "label", "integer", "hex"])
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
  lines = _good_lines(5)
  lines.insert(3, bad)
  path = _write(str(tmp_path / "day_1.tsv.gz"), lines)
  config = criteo_data.CriteoConfig(files=(path,), table_sizes=SIZES, batch_size=2)
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    _read_all(config)
  assert f"{path}:4: {message}" in str(error.value)


def test_skip_bad_records_skips_and_counts(tmp_path):
  lines = _good_lines(20)
  for index, bad in ((2, "garbage"), (7, _line(3)), (11, _line(1, ["x"] * 13)), (15, "")):
    lines[index] = bad
  path = _write(str(tmp_path / "day_2.tsv"), lines)
  good = _write(str(tmp_path / "good.tsv"),
                [line for i, line in enumerate(lines) if i not in (2, 7, 11, 15)])
  config = criteo_data.CriteoConfig(files=(path,), table_sizes=SIZES, batch_size=4,
                                    skip_bad_records=True)
  features, labels = _read_all(config)
  expected = _read_all(dataclasses.replace(config, files=(good,)))
  assert len(labels) == 16
  np.testing.assert_array_equal(features["sparse"], expected[0]["sparse"])
  np.testing.assert_array_equal(labels, expected[1])
  assert criteo_data.count_bad_records(config) == 4
  assert criteo_data.count_bad_records(dataclasses.replace(config, files=(good,))) == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(files=()), "files"),
    (dict(table_sizes=(10,) * 25), "table_sizes"),
    (dict(table_sizes=(1,) * 26), "table_sizes"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_config(kwargs, message):
  args = dict(files=("x.tsv",), table_sizes=SIZES, batch_size=2)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    criteo_data.CriteoConfig(**args)


def test_no_matching_file(tmp_path):
  config = criteo_data.CriteoConfig(files=(str(tmp_path / "none-*"),), table_sizes=SIZES,
                                    batch_size=2)
  with pytest.raises(ValueError, match="no file matches"):
    criteo_data.dataset(config)


if __name__ == "__main__":
  pytest_main.main(__file__)
