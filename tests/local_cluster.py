"""A MultiWorkerMirroredStrategy cluster of local processes: free ports and each worker's env.

The cluster is built by tools/cluster_env.py, as the local launcher builds it; here the repo
comes first on the children's PYTHONPATH and every child gets one CPU device, nothing else.
"""

import os

from tools import cluster_env

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

free_ports = cluster_env.free_ports


def base_env():
  """This process's environment for a child: no proxies or TF_CONFIG, the repo importable."""
  return cluster_env.child_env([REPO_ROOT])


def worker_envs(num_workers):
  """One environment per worker, with a TF_CONFIG of `num_workers` workers on localhost."""
  return cluster_env.worker_envs(num_workers, [REPO_ROOT])
