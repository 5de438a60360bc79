"""The environment of each process of a MultiWorkerMirroredStrategy cluster on one machine.

Free ports, one TF_CONFIG per worker and what a child must not inherit, in one place for the
local launcher (tools/local_workers.py) and the tests that start workers themselves
(tests/local_cluster.py), so both build clusters the same way.
"""

import json
import os
import socket

LOCALHOST = "127.0.0.1"
# Variables through which a proxy could capture gRPC's connections to 127.0.0.1.
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")


def free_ports(count):
  """`count` distinct ports that were free on 127.0.0.1 a moment ago.

  All are held open together until the last is chosen, so they differ; another process may
  still take one before a worker binds it, which would fail that worker at start-up.
  """
  sockets = []
  try:
    for _ in range(count):
      sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      sock.bind((LOCALHOST, 0))
      sockets.append(sock)
    return [sock.getsockname()[1] for sock in sockets]
  finally:
    for sock in sockets:
      sock.close()


def tf_config(addresses, index):
  """The TF_CONFIG of worker `index` in a cluster of workers at `addresses` ("host:port").

  Only "worker" tasks: worker 0 is the chief, as MultiWorkerMirroredStrategy and the trainers
  take it when the cluster has no "chief" task.
  """
  return json.dumps({
      "cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}
  })


def visible_gpus(index, gpus_per_worker):
  """CUDA_VISIBLE_DEVICES for worker `index`: its own GPUs, or none ("") for CPU workers.

  Without it every worker would see (and MultiWorkerMirroredStrategy use) every GPU.
  """
  first = index * gpus_per_worker
  return ",".join(str(gpu) for gpu in range(first, first + gpus_per_worker))


def child_env(python_path, environ=None, gpus=""):
  """`environ` (default: this process's) for a child: no proxies and no TF_CONFIG of its own.

  `python_path` comes first on PYTHONPATH, then the inherited entries made absolute (the
  child may run in another directory). Output is unbuffered, so that lines from several
  processes interleave as they were written. `gpus` is CUDA_VISIBLE_DEVICES ("": CPU only).
  """
  environ = os.environ if environ is None else environ
  env = {k: v for k, v in environ.items() if k.lower() not in _PROXY_VARIABLES and k != "TF_CONFIG"}
  env["NO_PROXY"] = env["no_proxy"] = f"{LOCALHOST},localhost"
  inherited = [os.path.abspath(p) for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  env["PYTHONPATH"] = os.pathsep.join(list(python_path) + inherited)
  env["CUDA_VISIBLE_DEVICES"] = gpus
  env["PYTHONUNBUFFERED"] = "1"
  return env


def worker_envs(num_workers, python_path, environ=None, gpus_per_worker=0):
  """One environment per worker: `child_env` with the TF_CONFIG of `num_workers` workers on
  free localhost ports and the worker's own GPUs (none when `gpus_per_worker` is 0)."""
  addresses = [f"{LOCALHOST}:{port}" for port in free_ports(num_workers)]
  envs = []
  for index in range(num_workers):
    env = child_env(python_path, environ, gpus=visible_gpus(index, gpus_per_worker))
    env["TF_CONFIG"] = tf_config(addresses, index)
    envs.append(env)
  return envs
