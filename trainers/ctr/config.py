"""The embedding (CTR) trainer's settings: one frozen, validated object built from the flags."""

import dataclasses
import os
from typing import Optional, Tuple

import adam_xla
from trainers.common import config as common
from trainers.common.config import check
from trainers.common.config import one_of
from trainers.ctr.criteo_format import NUM_SPARSE

DATA_SOURCES = ("generated", "criteo")
MAX_TABLE_ROWS = 2**31 - 1  # ids are looked up as int32
XLA_CPU_ISAS = ("", "SSE4_2", "AVX", "AVX2", "AVX512")  # "": XLA's own choice


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
  """Every setting of a run. `validate` checks them all before any work starts."""

  # Optimizer (the shared fields of common.config) and how sparse gradients update tables.
  learning_rate: float = 0.002
  beta_1: float = 0.9
  beta_2: float = 0.999
  epsilon: float = 1e-7
  amsgrad: bool = False
  clipnorm: Optional[float] = None
  clipvalue: Optional[float] = None
  global_clipnorm: Optional[float] = None
  weight_decay: float = 0.0
  shard_optimizer_state: bool = False
  lr_schedule: str = "cosine"
  warmup_steps: int = 0
  sparse_mode: str = "dense"
  # Model.
  table_sizes: Tuple[int, ...] = ()  # one for all features, or one per feature; () = default
  embedding_dim: int = 16
  bottom_mlp: Tuple[int, ...] = (64, 32)
  top_mlp: Tuple[int, ...] = (128, 64)
  # Data.
  data_source: str = "generated"
  train_files: Optional[str] = None  # comma-separated paths or globs (criteo)
  eval_files: Optional[str] = None
  data_dir: Optional[str] = None  # where generated data is cached (default under model_dir)
  generated_train_lines: int = 1_000_000
  generated_eval_lines: int = 50_000
  skip_bad_records: bool = False
  global_batch_size: int = 512
  # Run.
  strategy: str = "default"
  tpu: Optional[str] = None
  num_logical_cpus: int = 0
  train_steps: int = 2000  # about one epoch of the generated log
  steps_per_loop: int = 20
  eval_every: int = 500
  log_every: int = 200
  model_dir: str = "/tmp/adam_xla/embedding"
  keep_checkpoints: int = 3
  seed: int = 0
  deterministic: bool = False
  on_nonfinite: str = "stop"
  max_consecutive_nonfinite: int = 10
  # XLA's own code for the Adam update of [rows, 16] tables runs faster for AVX2 than for
  # XLA:CPU's default target (AVX-512 where the CPU has it): lazy mode's update (0.91 against
  # 1.01 ms at 1M rows, 0.95 against 1.16 at 4M) and dense mode's where the CPU kernel is off.
  # Dense mode's rows kernel is built by g++, not XLA: its full step showed no consistent
  # difference (11.81 against 10.90 ms at 1M rows, 27.45 against 28.91 at 4M). See
  # docs/performance.md, "Embedding tables".
  xla_cpu_max_isa: str = "AVX2"

  def validate(self, num_replicas=None):
    """Raises ValueError naming the flag, its value and what is accepted."""
    common.check_optimizer(self)
    check(self.sparse_mode in adam_xla.SPARSE_MODES, "sparse_mode", self.sparse_mode,
          one_of(adam_xla.SPARSE_MODES))
    check(
        len(self.table_sizes) in (0, 1, NUM_SPARSE), "table_sizes",
        ",".join(map(str, self.table_sizes)),
        f"one size for every feature or {NUM_SPARSE} sizes (C1..C26)")
    check(all(2 <= s <= MAX_TABLE_ROWS for s in self.table_sizes), "table_sizes",
          ",".join(map(str, self.table_sizes)),
          f"row counts in [2, {MAX_TABLE_ROWS}] (row 0 holds missing values)")
    check(self.data_source != "criteo" or bool(self.table_sizes), "table_sizes", "",
          "sizes for --data_source=criteo, e.g. --table_sizes=1000000 (hashed ids)")
    check(self.embedding_dim >= 1, "embedding_dim", self.embedding_dim, "an integer >= 1")
    for name in ("bottom_mlp", "top_mlp"):
      widths = getattr(self, name)
      check(all(w >= 1 for w in widths), name, ",".join(map(str, widths)),
            "comma-separated layer widths >= 1 (may be empty)")
    check(self.data_source in DATA_SOURCES, "data_source", self.data_source, one_of(DATA_SOURCES))
    for name in ("train_files", "eval_files"):
      check(self.data_source != "criteo" or bool(getattr(self, name)), name, getattr(self, name),
            "Criteo TSV files or globs (plain or .gz) with "
            "--data_source=criteo")
    for name in ("generated_train_lines", "generated_eval_lines"):
      value = getattr(self, name)
      check(value >= self.global_batch_size, name, value,
            f"at least one batch (--global_batch_size={self.global_batch_size})")
    common.check_run(self, num_replicas)
    check(self.xla_cpu_max_isa in XLA_CPU_ISAS, "xla_cpu_max_isa", self.xla_cpu_max_isa,
          "one of " + ", ".join(repr(isa) for isa in XLA_CPU_ISAS))
    if self.strategy == "tpu":  # what the TPU embedding API's Adam cannot do for the tables
      check(not self.amsgrad, "amsgrad", self.amsgrad, "False with --strategy=tpu")
      for name in ("clipnorm", "global_clipnorm"):
        check(
            getattr(self, name) is None, name, getattr(self, name),
            "unset with --strategy=tpu (use --clipvalue)")
      check(self.weight_decay == 0, "weight_decay", self.weight_decay, "0 with --strategy=tpu")
    return self

  def feature_table_sizes(self, generated_sizes=None):
    """Rows of each of the 26 tables: the flag's, else the generated log's own sizes."""
    if len(self.table_sizes) == NUM_SPARSE:
      return tuple(self.table_sizes)
    if len(self.table_sizes) == 1:
      return self.table_sizes * NUM_SPARSE
    if generated_sizes is None:
      raise ValueError("--table_sizes is needed unless the data is generated")
    return tuple(generated_sizes)


def apply_xla_cpu_isa(isa):
  """Adds --xla_cpu_max_isa=`isa` to XLA_FLAGS, which XLA reads when it first compiles.

  Nothing when `isa` is "" (XLA's own choice) or XLA_FLAGS already names an ISA.
  """
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if isa and "xla_cpu_max_isa" not in xla_flags:
    os.environ["XLA_FLAGS"] = f"{xla_flags} --xla_cpu_max_isa={isa}".strip()
