"""The learning-rate schedule and `adam_xla.Adam` a trainer's config describes."""

import adam_xla
from trainers.common import schedules


def make_optimizer(config, total_steps, *, reference_batch_size=None, **adam_options):
  """Returns (schedule, Adam) from the shared optimizer fields (see `common.config`).

  Call it in the strategy's scope. `adam_options` are the trainer's own Adam settings
  (e.g. `sparse_mode`).
  """
  schedule = schedules.make_schedule(config.lr_schedule, config.learning_rate, total_steps,
                                     warmup_steps=min(config.warmup_steps, total_steps),
                                     global_batch_size=config.global_batch_size,
                                     reference_batch_size=reference_batch_size)
  optimizer = adam_xla.Adam(schedule, beta_1=config.beta_1, beta_2=config.beta_2,
                            epsilon=config.epsilon, amsgrad=config.amsgrad,
                            weight_decay=config.weight_decay, clipnorm=config.clipnorm,
                            clipvalue=config.clipvalue, global_clipnorm=config.global_clipnorm,
                            shard_state=config.shard_optimizer_state, **adam_options)
  return schedule, optimizer
