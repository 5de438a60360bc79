"""A MultiWorkerMirroredStrategy cluster of local processes: free ports and each worker's env."""

import json
import os
import socket

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Variables through which a proxy could capture gRPC's connections to 127.0.0.1.
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")


def free_ports(count):
  """`count` distinct ports that were free on 127.0.0.1 a moment ago."""
  sockets = []
  try:
    for _ in range(count):
      sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      sock.bind(("127.0.0.1", 0))
      sockets.append(sock)
    return [sock.getsockname()[1] for sock in sockets]
  finally:
    for sock in sockets:
      sock.close()


def base_env():
  """This process's environment for a child: no proxies or TF_CONFIG, the repo importable."""
  env = {k: v for k, v in os.environ.items()
         if k.lower() not in _PROXY_VARIABLES and k != "TF_CONFIG"}
  env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
  # The repo root first, then whatever this process was given (Bazel's runfiles paths).
  env["PYTHONPATH"] = os.pathsep.join(
      [REPO_ROOT] + [os.path.abspath(p)
                     for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
  env["CUDA_VISIBLE_DEVICES"] = ""  # one CPU device per process, nothing else
  env["PYTHONUNBUFFERED"] = "1"
  return env


def worker_envs(num_workers):
  """One environment per worker, with a TF_CONFIG of `num_workers` workers on localhost."""
  cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(num_workers)]}
  envs = []
  for index in range(num_workers):
    env = base_env()
    env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                   "task": {"type": "worker", "index": index}})
    envs.append(env)
  return envs
