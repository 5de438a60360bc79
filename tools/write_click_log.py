"""Writes the generated click log (Criteo TSV layout) that the CTR trainer reads by default.

    ./bazelw run //tools:write_click_log -- --output_dir=/data/clicks --num_train=1000000

Prints where the files are, the embedding table sizes to read them with and the planted
model's AUC, the ceiling a trained model can approach. Reuses an identical existing log.
"""

from absl import app
from absl import flags

from trainers.ctr import generated_clicks

_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where to write the log (a subdirectory per parameters; "
    "local or gs://).")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 200_000, "Training lines.")
_NUM_EVAL = flags.DEFINE_integer("num_eval", 20_000, "Evaluation lines.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the planted model and the lines.")
_GZIP = flags.DEFINE_bool("gzip", False, "Write .tsv.gz files instead of plain .tsv.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not _OUTPUT_DIR.value:
    raise app.UsageError("--output_dir is required.")
  try:
    result = generated_clicks.write_click_log(_OUTPUT_DIR.value, _NUM_TRAIN.value, _NUM_EVAL.value,
                                              seed=_SEED.value, gzip=_GZIP.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  print(f"Click log in {result['directory']}: {len(result['train_files'])} train and "
        f"{len(result['eval_files'])} eval files.")
  print(f"table_sizes={','.join(map(str, result['table_sizes']))}")
  print(f"Planted AUC: train {result['planted_auc_train']:.4f}, eval "
        f"{result['planted_auc_eval']:.4f}; click rate {result['click_rate_train']:.3f}.")


if __name__ == "__main__":
  app.run(main)
