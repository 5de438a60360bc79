"""Tests of the embedding trainer's settings (trainers/ctr/config.py): every setting refuses a
bad value with a message naming the flag, and table sizes resolve per feature."""

import dataclasses
import os

import pytest

from tests import pytest_main
from trainers.ctr import config as config_lib

GOOD = config_lib.EmbeddingConfig()

BAD_CONFIGS = [
    ({"learning_rate": float("nan")}, "--learning_rate=nan is not valid: expected a finite"),
    ({"beta_1": -0.5}, r"--beta_1=-0.5 is not valid: expected a number in \[0, 1\)"),
    ({"beta_2": 1.0}, r"--beta_2=1.0 is not valid: expected a number in \[0, 1\)"),
    ({"epsilon": -1e-7}, "--epsilon=-1e-07 is not valid: expected a finite number > 0"),
    ({"clipnorm": 0.0}, "--clipnorm=0.0 is not valid: expected a number > 0"),
    ({"clipvalue": -1.0}, "--clipvalue=-1.0 is not valid"),
    ({"global_clipnorm": 0.0}, "--global_clipnorm=0.0 is not valid"),
    ({"weight_decay": -1.0}, "--weight_decay=-1.0 is not valid"),
    ({"lr_schedule": "exp"}, "--lr_schedule='exp' is not valid: expected one of constant"),
    ({"warmup_steps": -5}, "--warmup_steps=-5 is not valid"),
    ({"sparse_mode": "sparse"}, "--sparse_mode='sparse' is not valid: expected one of dense, "
     "lazy"),
    ({"table_sizes": (10, 20)}, "--table_sizes='10,20' is not valid: expected one size for "
     "every feature or 26 sizes"),
    ({"table_sizes": (1,)}, r"--table_sizes='1' is not valid: expected row counts in \[2, "),
    ({"table_sizes": (2**31,)}, "--table_sizes='2147483648' is not valid"),
    ({"data_source": "criteo", "train_files": "a",
      "eval_files": "b"}, "--table_sizes='' is not valid: expected sizes for --data_source=criteo"),
    ({"embedding_dim": 0}, "--embedding_dim=0 is not valid: expected an integer >= 1"),
    ({"bottom_mlp": (64, 0)}, "--bottom_mlp='64,0' is not valid: expected comma-separated"),
    ({"top_mlp": (-1,)}, "--top_mlp='-1' is not valid"),
    ({"data_source": "kaggle"}, "--data_source='kaggle' is not valid: expected one of "
     "generated, criteo"),
    ({"data_source": "criteo", "table_sizes": (100,),
      "eval_files": "b"}, "--train_files=None is not valid: expected Criteo TSV files"),
    ({"data_source": "criteo", "table_sizes": (100,),
      "train_files": "a"}, "--eval_files=None is not valid"),
    ({"generated_train_lines": 100}, "--generated_train_lines=100 is not valid: expected at "
     "least one batch"),
    ({"generated_eval_lines": 0}, "--generated_eval_lines=0 is not valid"),
    ({"global_batch_size": 0}, "--global_batch_size=0 is not valid"),
    ({"strategy": "horovod"}, "--strategy='horovod' is not valid: expected one of default"),
    ({"strategy": "tpu", "tpu": ""}, "--tpu='' is not valid"),
    ({"strategy": "tpu", "tpu": "local",
      "amsgrad": True}, "--amsgrad=True is not valid: expected False with --strategy=tpu"),
    ({"strategy": "tpu", "tpu": "local", "global_clipnorm": 1.0},
     "--global_clipnorm=1.0 is not valid: expected unset with --strategy=tpu"),
    ({"strategy": "tpu", "tpu": "local", "weight_decay": 0.1}, "--weight_decay=0.1 is not valid"),
    ({"num_logical_cpus": -1}, "--num_logical_cpus=-1 is not valid"),
    ({"train_steps": 0}, "--train_steps=0 is not valid: expected an integer >= 1"),
    ({"steps_per_loop": 0}, "--steps_per_loop=0 is not valid"),
    ({"eval_every": 30}, "--eval_every=30 is not valid: expected a multiple of "
     "--steps_per_loop=20"),
    ({"log_every": 7}, "--log_every=7 is not valid"),
    ({"keep_checkpoints": 0}, "--keep_checkpoints=0 is not valid"),
    ({"model_dir": ""}, "--model_dir='' is not valid"),
    ({"on_nonfinite": "ignore"}, "--on_nonfinite='ignore' is not valid: expected one of stop, "
     "skip"),
    ({"max_consecutive_nonfinite": 0}, "--max_consecutive_nonfinite=0 is not valid"),
    ({"xla_cpu_max_isa": "avx2"}, "--xla_cpu_max_isa='avx2' is not valid: expected one of '', "
     "'SSE4_2'"),
]


def test_defaults_are_valid():
  assert GOOD.validate() is GOOD


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS)
def test_bad_settings_are_refused_naming_the_flag(overrides, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(GOOD, **overrides).validate()


def test_every_setting_has_a_bad_value_test():
  tested = {name for overrides, _ in BAD_CONFIGS for name in overrides}
  untestable = {"deterministic", "skip_bad_records", "seed", "data_dir", "shard_optimizer_state"}
  assert {f.name for f in dataclasses.fields(GOOD)} - tested == untestable


def test_batch_must_split_over_replicas():
  with pytest.raises(ValueError, match="a multiple of the 3 replicas"):
    dataclasses.replace(GOOD, global_batch_size=512).validate(num_replicas=3)


def test_table_sizes_resolve_per_feature():
  generated = tuple(range(2, 28))
  assert GOOD.feature_table_sizes(generated) == generated
  assert dataclasses.replace(GOOD,
                             table_sizes=(1000,)).feature_table_sizes(generated) == ((1000,) * 26)
  sizes = tuple(range(100, 126))
  assert dataclasses.replace(GOOD, table_sizes=sizes).feature_table_sizes() == sizes
  with pytest.raises(ValueError, match="--table_sizes is needed"):
    GOOD.feature_table_sizes()


@pytest.mark.parametrize(
    "before,isa,after",
    [
        (None, "AVX2", "--xla_cpu_max_isa=AVX2"),
        ("--xla_dump_to=/d", "AVX2", "--xla_dump_to=/d --xla_cpu_max_isa=AVX2"),
        ("--xla_cpu_max_isa=AVX512", "AVX2", "--xla_cpu_max_isa=AVX512"),  # the user's wins
        (None, "", None),
    ])
def test_apply_xla_cpu_isa_goes_into_xla_flags_unless_set(monkeypatch, before, isa, after):
  if before is None:
    monkeypatch.delenv("XLA_FLAGS", raising=False)
  else:
    monkeypatch.setenv("XLA_FLAGS", before)
  config_lib.apply_xla_cpu_isa(isa)
  assert os.environ.get("XLA_FLAGS") == after


if __name__ == "__main__":
  pytest_main.main(__file__)
