"""The suites' settings as frozen configs, without TensorFlow: tools/benchmark.py parses its
flags into them once, tests build them directly, and they travel to the suites' child
processes as they are. A bad value raises ValueError naming its flag (a field's name)."""

import dataclasses
from typing import ClassVar, Optional, Tuple

MODELS = ("mlp16m", "resnet20")
STRATEGIES = ("default", "mirrored", "shard_state")  # the step suite's groups (bench/step.py)
MIRRORED_DEVICES = 2


def _require(condition, flag, message):
  if not condition:
    raise ValueError(f"--{flag} {message}")


def _at_least(config, minimum, *names):
  for name in names:
    value = getattr(config, name)
    _require(value is None or value >= minimum, name, f"must be >= {minimum}; got {value}.")


def _distinct(values, flag, choices=None):
  _require(
      values and len(set(values)) == len(values) and
      (choices is None or set(values) <= set(choices)), flag,
      "must be a comma list of distinct values" + (f" from {choices}" if choices else "") +
      f"; got {list(values)}.")


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
  """What every suite has: interleaved rounds, a seed, a choice of variants."""

  rounds: int = 5
  warmup_rounds: int = 1
  steps: Optional[int] = None  # timed steps per round per variant; None: the suite's default
  seed: int = 0
  variants: Tuple[str, ...] = ()  # (): every variant
  quick: bool = False
  QUICK: ClassVar[dict] = {}  # the --quick settings (a smoke run)

  def __post_init__(self):
    _at_least(self, 1, "rounds", "steps")
    _at_least(self, 0, "warmup_rounds")
    _require(
        len(set(self.variants)) == len(self.variants), "variants",
        f"must list distinct names; got {list(self.variants)}.")


@dataclasses.dataclass(frozen=True)
class Case:
  """PARAMS float32 parameters in TENSORS 1-D variables of PARAMS / TENSORS elements."""

  params: int
  tensors: int

  @classmethod
  def parse(cls, text):
    """'16000000x50' -> Case(16000000, 50)."""
    parts = text.strip().lower().split("x")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
      raise ValueError(f"{text!r} is not PARAMSxTENSORS (e.g. 16000000x50).")
    case = cls(*map(int, parts))
    if not 1 <= case.tensors <= case.params or case.params % case.tensors:
      raise ValueError(f"{text!r}: TENSORS must be >= 1 and PARAMS a positive multiple of it.")
    return case

  @property
  def size(self):
    return self.params // self.tensors

  @property
  def label(self):
    return f"{self.params:,} x {self.tensors}"


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(SuiteConfig):
  """The Adam update alone (tools/bench/optimizer.py)."""

  rounds: int = 7
  cases: Tuple[Case, ...] = (Case(16_000_000, 50), Case(1_000_000, 200))
  bandwidth_mb: int = 512  # the probe's four arrays together; far above the last-level cache
  peer_python: Optional[str] = None  # an interpreter with torch and jax/optax, for the peers
  QUICK: ClassVar[dict] = dict(cases=(Case(400_000, 20), Case(100_000, 50)), rounds=1,
                               warmup_rounds=1, steps=5, bandwidth_mb=64)

  def __post_init__(self):
    super().__post_init__()
    _distinct(self.cases, "cases")
    _at_least(self, 1, "bandwidth_mb")


@dataclasses.dataclass(frozen=True)
class StepConfig(SuiteConfig):
  """Full train steps beside Keras fit, and adam_xla's sharded state (tools/bench/step.py)."""

  models: Tuple[str, ...] = MODELS
  strategies: Tuple[str, ...] = STRATEGIES
  shard_devices: Tuple[int, ...] = (2, 4)  # logical CPUs of the shard_state comparisons
  batch_size: Optional[int] = None  # global; None: per model (DEFAULT_BATCH)
  # Four hidden layers of 2048 give the 16,737,256 parameters the MLP is known by.
  mlp_hidden: Tuple[int, ...] = (2048, 2048, 2048, 2048)
  probes: bool = True  # each variant alone in a child process: peak memory, kernel profile
  profile_calls: int = 5
  DEFAULT_STEPS: ClassVar[dict] = {"mlp16m": 30, "resnet20": 10}
  QUICK_STEPS: ClassVar[dict] = {"mlp16m": 10, "resnet20": 2}
  DEFAULT_BATCH: ClassVar[dict] = {"mlp16m": 64, "resnet20": 128}
  QUICK: ClassVar[dict] = dict(rounds=1, probes=False)

  def __post_init__(self):
    super().__post_init__()
    _distinct(self.models, "models", MODELS)
    _distinct(self.strategies, "strategies", STRATEGIES)
    _distinct(self.shard_devices, "shard_devices")
    _require(
        min(self.shard_devices) >= 2, "shard_devices",
        f"must be >= 2; got {list(self.shard_devices)}.")
    _at_least(self, 1, "batch_size", "profile_calls")
    replicas = ({MIRRORED_DEVICES} if "mirrored" in self.strategies else set()) | (set(
        self.shard_devices) if "shard_state" in self.strategies else set())
    for n, model in ((n, model) for n in replicas for model in self.models):
      _require(
          self.batch_for(model) % n == 0, "batch_size",
          f"must split evenly over {n} replicas; got {self.batch_for(model)}.")

  def steps_for(self, model):
    return self.steps or (self.QUICK_STEPS if self.quick else self.DEFAULT_STEPS)[model]

  def batch_for(self, model):
    return self.batch_size or self.DEFAULT_BATCH[model]


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig(SuiteConfig):
  """A DLRM's embedding table under adam_xla's sparse modes (tools/bench/embedding.py)."""

  steps: Optional[int] = 20
  rows: Tuple[int, ...] = (1_000_000, 4_000_000)
  embedding_dim: int = 16
  batch_size: int = 4096  # examples = ids per step
  bottom_mlp: Tuple[int, ...] = (64, 32)
  top_mlp: Tuple[int, ...] = (128, 64)
  ids: str = "zipf"  # or "uniform": every id distinct, the lazy path's worst case
  zipf_exponent: float = 1.1
  data_batches: int = 64  # enough that the rows they touch do not all stay in the caches
  optimizer_steps: int = 20  # updates per round of the update-only variants
  lazy_growth_steps: int = 100  # steps per round of each size's lazy step in the growth phase
  bandwidth_mb: int = 512
  profile_calls: int = 5
  xla_cpu_max_isa: str = "AVX2"  # as //trainers:embedding sets it; "": XLA's own choice
  QUICK: ClassVar[dict] = dict(rows=(20_000, 80_000), batch_size=256, rounds=1, warmup_rounds=1,
                               steps=5, optimizer_steps=5, bandwidth_mb=64, data_batches=8,
                               profile_calls=1, lazy_growth_steps=5)

  def __post_init__(self):
    super().__post_init__()
    _distinct(self.rows, "rows")
    _require(min(self.rows) >= 2, "rows", f"must list table sizes >= 2; got {list(self.rows)}.")
    _require(self.ids in ("zipf", "uniform"), "ids", f"must be zipf or uniform; got {self.ids!r}.")
    _at_least(self, 1, "embedding_dim", "batch_size", "data_batches", "optimizer_steps",
              "lazy_growth_steps", "bandwidth_mb", "profile_calls")


def make(config_class, quick=False, **settings):
  """A config of `config_class` from `settings`, on top of its QUICK ones with `quick`."""
  return config_class(**{**(config_class.QUICK if quick else {}), **settings, "quick": quick})
