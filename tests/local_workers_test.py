"""tools/local_workers.py end to end, and the Kubernetes manifest of docs/multi-host.md.

The launcher runs as a real process starting real workers: a small Python script (written to
the test's directory) that behaves as each test asks (report its TF_CONFIG, exit with a status,
fail once the others are ready, wait for a signal, ignore SIGTERM), and once a real
MultiWorkerMirroredStrategy program whose two workers all-reduce a value. The manifest is read
as YAML; its TF_CONFIG script is run with a pod's environment and its trainer flags are checked
by the trainer's own validation.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests import local_cluster
from tests import pytest_main
from tools import cluster_env
from tools import local_workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = os.path.join(ROOT, "docs", "kubernetes", "multi-worker-job.yaml")
TIMEOUT_SECONDS = 60

# One worker: behaves as argv[1 + its TF_CONFIG task index] says.
WORKER_SCRIPT = r'''
import json, os, signal, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = json.loads(os.environ["TF_CONFIG"])
INDEX = CONFIG["task"]["index"]
BEHAVIOR = sys.argv[1 + INDEX]
received = []


def ready():
  open(os.path.join(HERE, f"ready-{INDEX}"), "w").close()


def wait_for_the_others():
  others = len(CONFIG["cluster"]["worker"]) - 1
  deadline = time.time() + 30
  while sum(name.startswith("ready-") for name in os.listdir(HERE)) < others:
    if time.time() > deadline:
      sys.exit("the other workers never got ready")
    time.sleep(0.02)


def note(number, frame):
  received.append(number)
  print(f"got {signal.Signals(number).name} {len(received)}", flush=True)


def wait(seconds):
  deadline = time.time() + seconds
  while time.time() < deadline and not received:
    time.sleep(0.02)


if BEHAVIOR == "report":
  print(json.dumps({"index": INDEX, "tf_config": CONFIG,
                    "gpus": os.environ["CUDA_VISIBLE_DEVICES"]}))
  print(f"stderr of worker {INDEX}", file=sys.stderr)
elif BEHAVIOR.startswith("exit-"):
  sys.exit(int(BEHAVIOR.split("-")[1]))
elif BEHAVIOR.startswith("late-exit-"):  # after the others have exited
  time.sleep(1.0)
  print("finished")
  sys.exit(int(BEHAVIOR.split("-")[2]))
elif BEHAVIOR.startswith("fail-"):
  wait_for_the_others()
  sys.exit(int(BEHAVIOR.split("-")[1]))
elif BEHAVIOR == "die":
  wait_for_the_others()
  os.kill(os.getpid(), signal.SIGKILL)
elif BEHAVIOR == "stop-on-signal":  # as the trainers: checkpoint, then exit 75
  signal.signal(signal.SIGTERM, note)
  signal.signal(signal.SIGINT, note)
  ready()
  wait(30)
  if not received:
    sys.exit("no signal came")
  time.sleep(0.5)  # a second delivery of the signal would be counted meanwhile
  sys.exit(75)
elif BEHAVIOR == "ignore-sigterm":  # as a worker stuck in an all-reduce
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  ready()
  time.sleep(30)
  sys.exit("not killed")
else:
  sys.exit(f"unknown behavior {BEHAVIOR}")
'''

# A real MultiWorkerMirroredStrategy program: one all-reduce over the workers.
MULTI_WORKER_SCRIPT = r'''
import json, os
import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy()
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]


@tf.function
def total():
  value = strategy.run(lambda: tf.constant(float(index + 1)))
  return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)


print(f"replicas {strategy.num_replicas_in_sync} sum {float(total()):g}", flush=True)
'''


class _Run:
  """One launcher process and, once it ended, its status, output and duration."""

  def __init__(self, tmp_path, behaviors, flags=(), new_session=False):
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    self.tmp_path = tmp_path
    self.new_session = new_session  # the launcher in a process group of its own
    self.start = time.monotonic()
    self.process = subprocess.Popen([
        sys.executable, "-m", "tools.local_workers", f"--num_workers={len(behaviors)}", *flags,
        "--", sys.executable,
        str(script), *behaviors
    ], cwd=ROOT, env=local_cluster.base_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=new_session)

  def wait_until_ready(self, count):
    deadline = time.monotonic() + 30
    while len(list(self.tmp_path.glob("ready-*"))) < count:
      assert self.process.poll() is None, self.finish()
      assert time.monotonic() < deadline, "the workers never got ready"
      time.sleep(0.02)

  def finish(self):
    try:
      stdout, stderr = self.process.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
      if self.new_session:
        os.killpg(self.process.pid, signal.SIGKILL)
      else:
        self.process.kill()
      stdout, stderr = self.process.communicate()
    self.seconds = time.monotonic() - self.start
    self.status = self.process.returncode
    self.stdout, self.stderr = stdout.decode(), stderr.decode()
    return self

  def lines(self, stream, worker):
    prefix = f"[worker {worker}] "
    text = self.stdout if stream == "stdout" else self.stderr
    return [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]

  def __str__(self):
    return f"status {self.status}\n-- stdout:\n{self.stdout}\n-- stderr:\n{self.stderr}"


def test_every_worker_gets_its_place_in_one_cluster_and_prefixed_lines(tmp_path):
  run = _Run(tmp_path, ["report"] * 3).finish()
  assert run.status == 0, run
  reports = []
  for index in range(3):
    lines = run.lines("stdout", index)
    assert len(lines) == 1, run
    reports.append(json.loads(lines[0]))
    assert run.lines("stderr", index) == [f"stderr of worker {index}"], run
  assert [r["index"] for r in reports] == [0, 1, 2]
  for index, report in enumerate(reports):
    assert report["tf_config"]["task"] == {"type": "worker", "index": index}
    assert report["tf_config"]["cluster"] == reports[0]["tf_config"]["cluster"]
    assert report["gpus"] == ""  # CPU only unless --gpus_per_worker
  addresses = reports[0]["tf_config"]["cluster"]["worker"]
  assert len(addresses) == 3 and len(set(addresses)) == 3
  assert all(a.startswith("127.0.0.1:") for a in addresses)
  # Every other line is the launcher's own.
  others = [line for line in run.stderr.splitlines() if not line.startswith("[worker ")]
  assert others and all(line.startswith(local_workers.LAUNCHER_PREFIX) for line in others), run
  assert "all workers exited (worker 0: 0, worker 1: 0, worker 2: 0)" in run.stderr


def test_the_workers_form_a_multi_worker_mirrored_strategy_cluster(tmp_path):
  """TensorFlow itself reads the TF_CONFIGs: two replicas, and each sees the other's value."""
  script = tmp_path / "multi_worker.py"
  script.write_text(MULTI_WORKER_SCRIPT)
  result = subprocess.run([
      sys.executable, "-m", "tools.local_workers", "--num_workers=2", "--", sys.executable,
      str(script)
  ], cwd=ROOT, env=local_cluster.base_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_SECONDS * 2)
  assert result.returncode == 0, result.stderr[-3000:]
  for index in range(2):
    assert f"[worker {index}] replicas 2 sum 3\n" in result.stdout, result


def test_gpus_per_worker_gives_each_worker_gpus_of_its_own(tmp_path):
  run = _Run(tmp_path, ["report"] * 2, ["--gpus_per_worker=2"]).finish()
  assert run.status == 0, run
  gpus = [json.loads(run.lines("stdout", i)[0])["gpus"] for i in range(2)]
  assert gpus == ["0,1", "2,3"]


@pytest.mark.parametrize(
    "behaviors,status",
    [
        (["exit-3", "exit-0"], 3),
        # A worker that stopped with the trainers' "interrupted" status is no failure: the chief
        # is left to finish.
        (["late-exit-0", "exit-75"], 0),
        # The chief's status, whatever the other workers' (here: one failed after it finished).
        (["exit-0", "late-exit-4"], 0),
    ])
def test_the_launcher_exits_with_the_chiefs_status(tmp_path, behaviors, status):
  run = _Run(tmp_path, behaviors).finish()
  assert run.status == status, run
  if "late-exit-0" in behaviors:
    assert run.lines("stdout", 0) == ["finished"], run
    assert "SIGTERM" not in run.stderr, run


@pytest.mark.parametrize("failure,shown", [("fail-3", 3), ("die", 128 + signal.SIGKILL)])
def test_a_failing_worker_stops_the_others(tmp_path, failure, shown):
  run = _Run(tmp_path, ["stop-on-signal", "stop-on-signal", failure]).finish()
  assert run.status == local_workers.INTERRUPTED_EXIT_CODE, run
  assert f"worker 2 failed (exit status {shown}): SIGTERM to worker(s) 0, 1" in run.stderr, run
  for index in range(2):
    assert run.lines("stdout", index) == ["got SIGTERM 1"], run
  assert "still running after" not in run.stderr, run  # they stopped on SIGTERM, not SIGKILL


def test_workers_that_ignore_sigterm_are_killed_after_the_grace_period(tmp_path):
  run = _Run(tmp_path, ["ignore-sigterm", "fail-5"], ["--grace_seconds=1"]).finish()
  assert run.status == 128 + signal.SIGKILL, run
  assert "worker 1 failed (exit status 5)" in run.stderr, run
  assert "worker 0 still running after --grace_seconds=1: SIGKILL" in run.stderr, run
  assert run.seconds >= 1, run  # the grace period was given (a bound slowness cannot break)


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_launcher_reaches_every_worker_once(tmp_path, number):
  """SIGTERM as a scheduler sends it (to the launcher's process); SIGINT as a terminal sends
  Ctrl-C (to its whole process group: the workers must still get it only once)."""
  run = _Run(tmp_path, ["stop-on-signal"] * 2, new_session=True)
  run.wait_until_ready(2)
  if number == signal.SIGINT:
    os.killpg(run.process.pid, number)
  else:
    run.process.send_signal(number)
  run.finish()
  name = signal.Signals(number).name
  assert run.status == local_workers.INTERRUPTED_EXIT_CODE, run
  for index in range(2):
    assert run.lines("stdout", index) == [f"got {name} 1"], run
  assert f"{name}: passed on to 2 running worker(s)" in run.stderr, run


@pytest.mark.parametrize("arguments,message", [
    (["--num_workers=0", "--", "python3"
     ], "--num_workers=0 is not valid: expected an integer >= 1."),
    (["--gpus_per_worker=-1", "--", "python3"
     ], "--gpus_per_worker=-1 is not valid: expected an integer >= 0 (0: CPU only)."),
    (["--grace_seconds=-2", "--", "python3"
     ], "--grace_seconds=-2.0 is not valid: expected a number >= 0."),
    (["--num_workers=two", "--", "python3"], "flag --num_workers=two: invalid literal"),
    (["--num_wrkers=2", "--", "python3"], "Unknown command line flag 'num_wrkers'"),
    (["--num_workers=2", "python3", "-m", "trainers.ctr.main"
     ], "put `--` between the launcher's flags and the command to run, as in: local_workers "
     "--num_workers=2 -- python3 -m trainers.ctr.main"),
    (["--num_workers=2", "--"], "no command: put the program to run after `--`"),
    (["--", "no-such-program-here"
     ], "the command after `--`, 'no-such-program-here', is not an executable file or on PATH."),
])
def test_bad_command_lines_stop_before_any_worker_starts(arguments, message):
  result = subprocess.run([sys.executable, "-m", "tools.local_workers", *arguments], cwd=ROOT,
                          env=local_cluster.base_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_SECONDS)
  assert result.returncode == 1, result
  assert message in result.stderr, result.stderr
  assert f"{local_workers.LAUNCHER_PREFIX}started" not in result.stderr


def test_the_interrupted_status_is_the_trainers():
  from trainers.common import training_loop  # pylint: disable=g-import-not-at-top
  assert local_workers.INTERRUPTED_EXIT_CODE == training_loop.INTERRUPTED_EXIT_CODE


# ---- docs/kubernetes/multi-worker-job.yaml -------------------------------------------------


@pytest.fixture(name="manifest", scope="module")
def _manifest():
  with open(MANIFEST) as f:
    documents = list(yaml.safe_load_all(f))
  kinds = {(d["apiVersion"], d["kind"]): d for d in documents}
  assert sorted(kinds) == [("batch/v1", "Job"), ("v1", "Service")]
  return kinds[("v1", "Service")], kinds[("batch/v1", "Job")]


def _container(job):
  containers = job["spec"]["template"]["spec"]["containers"]
  assert len(containers) == 1
  return containers[0]


def _workers(container):
  return {e["name"]: e["value"] for e in container["env"]}["WORKERS"].split(",")


def test_manifest_job_and_headless_service_fit_together(manifest):
  service, job = manifest
  spec, pod = job["spec"], job["spec"]["template"]
  assert spec["completionMode"] == "Indexed"
  assert spec["completions"] == spec["parallelism"] >= 2
  assert pod["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy
  exit_codes = [r["onExitCodes"] for r in spec["podFailurePolicy"]["rules"] if "onExitCodes" in r]
  assert exit_codes[0]["values"] == [local_workers.INTERRUPTED_EXIT_CODE]
  assert service["spec"]["clusterIP"] == "None"
  selector = service["spec"]["selector"]
  assert selector and selector.items() <= pod["metadata"]["labels"].items()
  assert pod["spec"]["subdomain"] == service["metadata"]["name"]
  container = _container(job)
  assert container["command"] and container["args"]
  assert exit_codes[0]["containerName"] == container["name"]
  # Worker i is the pod of index i, at the port the Service and the container name.
  port = service["spec"]["ports"][0]["port"]
  assert [p["containerPort"] for p in container["ports"]] == [port]
  name, subdomain = job["metadata"]["name"], pod["spec"]["subdomain"]
  assert _workers(container) == [
      f"{name}-{i}.{subdomain}:{port}" for i in range(spec["completions"])
  ]


def test_manifest_command_gives_each_pod_its_tf_config(manifest, tmp_path):
  """The container's shell command, run as in pod 1, hands the trainer its TF_CONFIG."""
  _, job = manifest
  container = _container(job)
  env_names = {e["name"] for e in container["env"]}
  for word in container["command"] + container["args"]:  # no $(VAR) for Kubernetes to expand
    assert not any(f"$({name})" in word for name in env_names | {"JOB_COMPLETION_INDEX"}), word
  shell, flag, script, name = container["command"]
  assert (shell, flag) == ("/bin/sh", "-c")
  out = tmp_path / "tf_config.json"
  probe = [
      sys.executable, "-c", f"import os; open({str(out)!r}, 'w').write(os.environ['TF_CONFIG'])"
  ]
  env = {
      "PATH": os.environ["PATH"], "WORKERS": ",".join(_workers(container)),
      "JOB_COMPLETION_INDEX": "1"
  }
  subprocess.run([shell, flag, script, name, *probe], env=env, check=True, timeout=30)
  assert json.loads(out.read_text()) == json.loads(cluster_env.tf_config(_workers(container), 1))


def test_manifest_trainer_flags_pass_the_trainers_checks(manifest):
  """Every flag exists and the config validates, with one replica per worker."""
  _, job = manifest
  args = _container(job)["args"]
  assert args[:3] == ["python3", "-m", "trainers.image_classification.main"]
  check = ("import sys\n"
           "from absl import flags\n"
           "from trainers.image_classification import main\n"
           "flags.FLAGS(sys.argv)\n"
           f"main.config_from_flags().validate(num_replicas={job['spec']['completions']})\n")
  result = subprocess.run([sys.executable, "-c", check, *args[3:]], cwd=ROOT,
                          env=local_cluster.base_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_SECONDS)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "--strategy=multi_worker" in args


if __name__ == "__main__":
  pytest_main.main(__file__)
