"""Another library's Adam in a process of its own, driven by tools/bench/optimizer.py.

    PEER_PYTHON tools/bench/peer_adam.py --system=torch|optax|numpy --problem=DIR/problem.npz

Imports NumPy and the one library of --system, nothing of this project (the interpreter is the
peers' virtualenv, see tools/requirements-peers.in). The problem file holds `initial` and
`grads` ([tensors, size] float32, row i is tensor i) and `hyper` (learning rate, beta_1,
beta_2, epsilon). Systems, each over one 1-D float32 tensor per row, epsilon added after the
bias correction (p -= lr m_hat / (sqrt(v_hat) + eps)):
  torch   torch.optim.Adam(fused=True), torch.set_num_threads(os.cpu_count())
  optax   optax.adam: update and apply_updates in one jax.jit, params and state donated
  numpy   in-place float32 NumPy, one thread (the tests' stand-in: no torch or jax in CI)
Protocol, one line each way per command, on stdin/stdout:
  (start)      -> "ready VERSION", or "unavailable REASON" and exit 0
  run N        -> N updates, waited for -> "ok STEP_COUNT SECONDS CPU_SECONDS STATE_BYTES"
                  (the system's step count, this process's wall and CPU time for the N, the
                  optimizer state's bytes)
  params PATH  -> the parameters saved as one [tensors, size] .npy -> "ok"
  quit         -> exit
"""

import argparse
import os
import sys
import time

import numpy as np


def torch_adam(initial, grads, lr, b1, b2, eps):
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(os.cpu_count())
  params = [torch.nn.Parameter(torch.tensor(row)) for row in initial]
  for p, g in zip(params, grads):
    p.grad = torch.tensor(g)
  opt = torch.optim.Adam(params, lr=lr, betas=(b1, b2), eps=eps, fused=True)

  def run(n):
    for _ in range(n):
      opt.step()
    return int(opt.state[params[0]]["step"])

  def state_bytes():
    return sum(t.nbytes for s in opt.state.values() for t in s.values())

  return run, lambda: np.stack([p.detach().numpy() for p in params]), state_bytes, \
      torch.__version__


def optax_adam(initial, grads, lr, b1, b2, eps):
  import functools  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  opt = optax.adam(lr, b1=b1, b2=b2, eps=eps)
  gs = [jax.device_put(g) for g in grads]
  box = {"params": [jax.device_put(row) for row in initial]}
  box["state"] = opt.init(box["params"])

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state):
    updates, state = opt.update(gs, state, params)
    return optax.apply_updates(params, updates), state

  def run(n):
    for _ in range(n):
      box["params"], box["state"] = step(box["params"], box["state"])
    jax.block_until_ready(box["params"])
    return int(box["state"][0].count)

  def state_bytes():
    return sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(box["state"]))

  return run, lambda: np.stack([np.asarray(p) for p in box["params"]]), state_bytes, \
      f"jax {jax.__version__}, optax {optax.__version__}"


def numpy_adam(initial, grads, lr, b1, b2, eps):
  p, m, v = initial.copy(), np.zeros_like(initial), np.zeros_like(initial)
  g, g2, step = grads, grads * grads, [0]
  f32 = np.float32

  def run(n):
    for _ in range(n):
      step[0] += 1
      np.add(m * f32(b1), f32(1 - b1) * g, out=m)
      np.add(v * f32(b2), f32(1 - b2) * g2, out=v)
      denominator = np.sqrt(v / f32(1 - b2**step[0])) + f32(eps)
      np.subtract(p, f32(lr) * (m / f32(1 - b1**step[0])) / denominator, out=p)
    return step[0]

  return run, lambda: p, lambda: m.nbytes + v.nbytes + 8, f"numpy {np.__version__}"


SYSTEMS = {"torch": torch_adam, "optax": optax_adam, "numpy": numpy_adam}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--system", choices=sorted(SYSTEMS), required=True)
  parser.add_argument("--problem", required=True)
  args = parser.parse_args()
  problem = np.load(args.problem)
  lr, b1, b2, eps = (float(x) for x in problem["hyper"])
  try:
    run, params, state_bytes, version = SYSTEMS[args.system](problem["initial"], problem["grads"],
                                                             lr, b1, b2, eps)
  except ImportError as error:
    print(f"unavailable {sys.executable} cannot import it ({error})", flush=True)
    return
  print(f"ready {version}", flush=True)
  for line in sys.stdin:
    command, _, argument = line.strip().partition(" ")
    if command == "run":
      wall, cpu = time.perf_counter(), time.process_time()
      count = run(int(argument))
      wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
      print(f"ok {count} {wall} {cpu} {state_bytes()}", flush=True)
    elif command == "params":
      np.save(argument, params())
      print("ok", flush=True)
    elif command == "quit":
      return
    else:
      print(f"error unknown command {line.strip()!r}", flush=True)


if __name__ == "__main__":
  main()
