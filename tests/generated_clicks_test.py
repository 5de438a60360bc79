"""Tests of trainers/ctr/generated_clicks.py: layout, Zipf ids, planted model and reuse."""

import json
import os

import numpy as np
import pytest

from tests import pytest_main
from trainers.ctr import criteo_data
from trainers.ctr import generated_clicks
from trainers.ctr import metrics

VOCAB = (5000, 50, 3) + (200,) * 23


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "gzip"])
def log(request, tmp_path_factory):
  root = str(tmp_path_factory.mktemp("clicks"))
  return root, generated_clicks.write_click_log(root, num_train=20000, num_eval=5000,
                                                vocab_sizes=VOCAB, seed=4, gzip=request.param)


def _read(files, batch_size=1000):
  config = criteo_data.CriteoConfig(files=tuple(files),
                                    table_sizes=generated_clicks.table_sizes(VOCAB),
                                    batch_size=batch_size)
  dense, sparse, labels = [], [], []
  for features, label in criteo_data.dataset(config):
    dense.append(features["dense"].numpy())
    sparse.append(features["sparse"].numpy())
    labels.append(label.numpy())
  return np.concatenate(dense), np.concatenate(sparse), np.concatenate(labels), config


def test_layout_parses_with_criteo_data(log):
  root, result = log
  assert os.path.dirname(result["directory"]) == root
  assert [n for n in os.listdir(root) if n.startswith(".")] == []  # no staging dir left
  suffix = ".tsv.gz" if result["train_files"][0].endswith(".gz") else ".tsv"
  assert [os.path.basename(f) for f in result["train_files"]
         ] == [f"train-{i:05d}-of-00004{suffix}" for i in range(4)]
  dense, sparse, labels, config = _read(result["train_files"])
  assert criteo_data.count_bad_records(config) == 0
  assert dense.shape == (20000, 13) and sparse.shape == (20000, 26)
  assert set(np.unique(labels)) == {0.0, 1.0}
  assert 0.2 < labels.mean() < 0.3  # calibrated near Criteo's click rate
  assert labels.mean() == pytest.approx(result["click_rate_train"])
  # Ids keep their identity: row = id + 1 < vocab + 1, and 0 only for missing values.
  assert (sparse <= np.array(VOCAB)).all()
  assert 0.01 < (sparse == 0).mean() < 0.03
  assert 0.01 < (dense == 0).mean()  # missing (and zero counts)
  _, _, eval_labels, _ = _read(result["eval_files"])
  assert len(eval_labels) == 5000


def test_ids_are_zipf_distributed(log):
  _, result = log
  _, sparse, _, _ = _read(result["train_files"])
  counts = np.bincount(sparse[:, 0], minlength=VOCAB[0] + 1)[1:]
  ranked = np.sort(counts)[::-1]
  assert ranked[0] > 50 * max(np.median(counts), 1)
  # Frequency ~ rank**-1.1: the log-log slope of the head is near -1.1.
  ranks = np.arange(1, 51)
  slope = np.polyfit(np.log(ranks), np.log(ranked[:50]), 1)[0]
  assert -1.4 < slope < -0.8, slope
  # The most frequent id is not simply id 0: ranks are scattered over the ids.
  assert np.argmax(counts) != 0


def test_planted_auc_is_a_real_ceiling(log):
  _, result = log
  for key in ("planted_auc_train", "planted_auc_eval"):
    assert 0.7 < result[key] < 0.95, result
  # A per-id click-rate model learned on train stays below the planted AUC on eval.
  _, train_ids, train_labels, _ = _read(result["train_files"])
  _, eval_ids, eval_labels, _ = _read(result["eval_files"])
  rate = train_labels.mean()
  logit = np.zeros(len(eval_labels))
  for f in range(26):
    clicks = np.bincount(train_ids[:, f], train_labels, minlength=VOCAB[f] + 1)
    shows = np.bincount(train_ids[:, f], minlength=VOCAB[f] + 1)
    smoothed = (clicks + 20 * rate) / (shows + 20)
    logit += np.log(smoothed / (1 - smoothed))[eval_ids[:, f]]
  learned = metrics.auc(eval_labels, logit)
  assert 0.6 < learned < result["planted_auc_eval"], (learned, result)


def test_second_call_reuses_without_rewriting(log, monkeypatch):
  root, result = log
  directory = result["directory"]
  mtimes = {n: os.path.getmtime(os.path.join(directory, n)) for n in os.listdir(directory)}

  def fail(*args, **kwargs):
    raise AssertionError("regenerated")

  monkeypatch.setattr(generated_clicks, "_generate", fail)
  gzip = result["train_files"][0].endswith(".gz")
  again = generated_clicks.write_click_log(root, num_train=20000, num_eval=5000, vocab_sizes=VOCAB,
                                           seed=4, gzip=gzip)
  assert again == result
  paths = [os.path.join(directory, name) for name in os.listdir(directory)]
  assert {os.path.basename(p): os.path.getmtime(p) for p in paths} == mtimes
  with open(os.path.join(directory, "manifest.json")) as f:
    assert json.load(f)["params"]["vocab_sizes"] == list(VOCAB)


def test_incomplete_log_is_regenerated_and_seeds_matter(tmp_path):
  args = dict(num_train=300, num_eval=100, vocab_sizes=VOCAB)
  a = generated_clicks.write_click_log(str(tmp_path / "a"), seed=1, **args)
  os.remove(a["train_files"][2])
  assert generated_clicks.write_click_log(str(tmp_path / "a"), seed=1, **args) == a
  b = generated_clicks.write_click_log(str(tmp_path / "b"), seed=1, **args)
  c = generated_clicks.write_click_log(str(tmp_path / "c"), seed=2, **args)
  with open(a["train_files"][2]) as fa, open(b["train_files"][2]) as fb:
    assert fa.read() == fb.read()
  with open(a["train_files"][2]) as fa, open(c["train_files"][2]) as fc:
    assert fa.read() != fc.read()


def test_lines_are_drawn_in_vectorized_chunks(tmp_path, monkeypatch):
  """What keeps generation quick: the planted model draws a shard's lines in chunks of up to
  _CHUNK lines per numpy call, never line by line."""
  shipped_chunk = generated_clicks._CHUNK
  drawn = []
  draw = generated_clicks._PlantedModel.draw

  def recording_draw(model, n, rng):
    drawn.append(n)
    return draw(model, n, rng)

  monkeypatch.setattr(generated_clicks._PlantedModel, "draw", recording_draw)
  monkeypatch.setattr(generated_clicks, "_CHUNK", 4000)
  generated_clicks.write_click_log(str(tmp_path), num_train=20_000, num_eval=5000,
                                   vocab_sizes=VOCAB, seed=0)
  # 4 train shards of 5000 lines and 1 eval shard of 5000: each a full chunk and the rest.
  assert drawn == [4000, 1000] * 5
  assert shipped_chunk >= 10_000


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_train=0), "num_train"),
    (dict(num_eval=1.5), "num_eval"),
    (dict(vocab_sizes=(10,) * 25), "vocab_sizes"),
    (dict(vocab_sizes=(0,) * 26), "vocab_sizes"),
])
def test_bad_arguments(tmp_path, kwargs, message):
  args = dict(num_train=10, num_eval=10)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    generated_clicks.write_click_log(str(tmp_path), **args)


if __name__ == "__main__":
  pytest_main.main(__file__)
