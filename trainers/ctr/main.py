"""A DLRM-style click-through-rate model with large embedding tables, trained with adam_xla.

    ./bazelw run //trainers:embedding -- --sparse_mode=lazy

With no data given it generates a click log in Criteo's TSV layout (Zipf ids, a planted
logistic model whose own AUC is the ceiling) under --model_dir and trains on it; with
--data_source=criteo it reads Criteo TSV files (plain or gzip). Flags are read here once,
turned into an `EmbeddingConfig` and validated before any work starts.
"""

from absl import app

from trainers.common import config as common_config
from trainers.ctr import config as config_lib

_HELP = {
    **common_config.SHARED_HELP,
    "sparse_mode": "How embedding rows are updated: dense (Keras semantics: every row's "
                   "moments decay every step) or lazy (only the batch's rows; cost independent "
                   "of the table size).",
    "table_sizes": "Rows per embedding table: one number for all 26 features or 26 "
                   "comma-separated numbers (ids are hashed into them; row 0 = missing). "
                   "Default for generated data: its vocabularies.",
    "embedding_dim": "Width of every embedding vector and of the bottom MLP's output.",
    "bottom_mlp": "Hidden widths of the bottom MLP (dense features), comma-separated.",
    "top_mlp": "Hidden widths of the top MLP (interactions), comma-separated.",
    "data_source": f"Where the data comes from: {', '.join(config_lib.DATA_SOURCES)}.",
    "train_files": "Criteo TSV training files, comma-separated paths or globs (.gz: gzip).",
    "eval_files": "Criteo TSV held-out files, comma-separated paths or globs.",
    "data_dir": "Where to cache the generated click log (default: under --model_dir).",
    "generated_train_lines": "Lines of the generated training log.",
    "generated_eval_lines": "Lines of the generated held-out log.",
    "skip_bad_records": "Skip (and count) malformed lines instead of stopping at the first.",
    "xla_cpu_max_isa": "Vector instruction set XLA compiles for on CPU ('' = XLA's default); "
                       "AVX2 vectorizes the table updates that AVX-512 leaves scalar. Ignored "
                       "when XLA_FLAGS already sets it, and by GPU and TPU compilers.",
}
common_config.define_flags(config_lib.EmbeddingConfig, _HELP)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    config = common_config.from_flags(config_lib.EmbeddingConfig).validate()
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  config_lib.apply_xla_cpu_isa(config.xla_cpu_max_isa)
  if config.num_logical_cpus:
    from trainers.common import strategies  # pylint: disable=g-import-not-at-top
    strategies.split_cpu(config.num_logical_cpus)
  from trainers.common import training_loop  # pylint: disable=g-import-not-at-top
  from trainers.ctr import train  # pylint: disable=g-import-not-at-top
  metrics = training_loop.exit_status_of(lambda: train.train_and_evaluate(config))
  planted = metrics.pop("planted_auc", None)
  print("final evaluation: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()) +
        (f"  (planted model's AUC {planted:.4f})" if planted else ""))


if __name__ == "__main__":
  app.run(main)
