"""The 7B and 3B train steps on paper: compiled ahead of time, nothing allocated, with XLA's
per-device memory (arguments, outputs, temporaries) and FLOPs per step.

  python -m experiments.bench_memory                                # 8 simulated CPU devices
  python -m experiments.bench_memory --topology=v5p:4x4x8           # a TPU v5p-256 (128 chips),
                                                                    # deviceless: needs libtpu
  python -m experiments.bench_memory --which=7b --per_device=1,2 --mesh=1,-1,1

Each config compiles at two per-device batch sizes m1 < m2 (clips or images per data-parallel
shard): the difference of the temporaries is the activation memory per example and device
(remat keeps only layer inputs; the tiled attention keeps no [L, L] logits), the rest is the
fixed part. From those it prints what a TPU v5p-256 (128 chips x 95 GiB) and 64 x H100 (80 GiB)
hold per chip, and how many microbatches (train.grad_accum_steps) the config's batch needs.
XLA:CPU's scheduler is not memory-aware (it keeps the forward activations that remat would
recompute), so its temporaries overstate an accelerator's: read the activations from a TPU
topology compile where libtpu is installable (pip install "jax[tpu]" in a separate venv).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # before jax

import time  # noqa: E402

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.configs import starflow_3b_t2i_256, starflow_v_7b_t2v_480p  # noqa: E402
from starflow_jax import sharding  # noqa: E402
from starflow_jax.train import Trainer  # noqa: E402

FLAGS = flags.FLAGS
GIB = 2**30
CONFIGS = {"7b": starflow_v_7b_t2v_480p, "3b": starflow_3b_t2i_256}
# The 7B's clips: 81 frames at 640x480 -> 21 WAN 2.2 latent frames of 30 x 40 (16x, 4x).
LATENT_SHAPES = {"7b": (21, 30, 40), "3b": (1, 32, 32)}
TARGETS = (("TPU v5p-256", 128, 95.0), ("64 x H100", 64, 80.0))


def define_flags():
  """Registers the flags of this command; called only when it runs as a program, so that
  every module can be imported into one process (tests) without clashing flag names."""
  flags.DEFINE_string("which", "7b,3b", "comma list: 7b, 3b")
  flags.DEFINE_string(
      "topology", "", "TPU topology to compile for without devices (e.g. v5p:4x4x8); "
      "empty: this machine's devices (8 simulated CPU devices)")
  flags.DEFINE_string("mesh", "1,-1,1", "(data, fsdp, tensor); -1 takes the remaining devices")
  flags.DEFINE_string("per_device", "1,2", "two per-device batch sizes (examples per data shard)")
  flags.DEFINE_integer("grad_accum_steps", 1, "microbatches per step in the compiled program")


def devices():
  if not FLAGS.topology:
    return jax.devices()
  from jax.experimental import topologies
  return topologies.get_topology_desc(platform="tpu", topology_name=FLAGS.topology).devices


def compile_step(name: str, mesh_shape, per_device: int):
  """(memory analysis, flops per device, seconds to compile, state bytes) of one train step."""
  config = CONFIGS[name].get_config()
  devs = devices()
  mesh = sharding.make_mesh(mesh_shape, devs)
  dp = sharding.data_parallel_size(mesh)
  config.mesh.update(shape=tuple(mesh.devices.shape))
  config.train.update(batch_size=per_device * dp * FLAGS.grad_accum_steps, grad_accum_steps=FLAGS.grad_accum_steps)
  trainer = Trainer(config, mesh)
  model = trainer.model_config
  batch = config.train.batch_size
  frames, height, width = LATENT_SHAPES[name]
  spec = sharding.batch_sharding(mesh)
  abstract_batch = {
      "video": jax.ShapeDtypeStruct((batch, frames, height, width, model.in_channels), jnp.float32, sharding=spec),
      "text_embeddings": jax.ShapeDtypeStruct((batch, model.txt_size, model.txt_dim), jnp.float32, sharding=spec)
  }
  start = time.perf_counter()
  compiled = trainer.compiled_step(False).lower(trainer.abstract_state, abstract_batch).compile()
  seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  state_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(trainer.abstract_state))
  return compiled.memory_analysis(), float(cost.get("flops", 0.0)), seconds, state_bytes, mesh, batch


def report(name: str) -> None:
  mesh_shape = tuple(int(s) for s in FLAGS.mesh.split(","))
  m1, m2 = (int(s) for s in FLAGS.per_device.split(","))
  rows = {}
  for m in (m1, m2):
    memory, flops, seconds, state_bytes, mesh, batch = compile_step(name, mesh_shape, m)
    rows[m] = memory
    print(
        f"{name} | {len(mesh.devices.flat)} x {mesh.devices.flat[0].device_kind} | mesh {dict(mesh.shape)} | "
        f"batch {batch} ({m}/device, {FLAGS.grad_accum_steps} microbatch) | per device: arguments "
        f"{memory.argument_size_in_bytes / GIB:.2f} GiB, outputs {memory.output_size_in_bytes / GIB:.2f} GiB "
        f"(aliased {memory.alias_size_in_bytes / GIB:.2f}), temporaries {memory.temp_size_in_bytes / GIB:.2f} GiB | "
        f"{flops / 1e12:.1f} TFLOP | compile {seconds:.0f} s",
        flush=True)
  per_example = (rows[m2].temp_size_in_bytes - rows[m1].temp_size_in_bytes) / (m2 - m1) / GIB
  fixed = rows[m1].temp_size_in_bytes / GIB - m1 * per_example
  config = CONFIGS[name].get_config()
  print(
      f"{name} | activations {per_example:.2f} GiB per example per device, fixed temporaries "
      f"{fixed:.2f} GiB, train state {state_bytes / GIB:.1f} GiB in all",
      flush=True)
  if not FLAGS.topology:
    print(
        f"{name} | per-chip fit not derived from a CPU compile: XLA:CPU keeps the activations remat "
        "would recompute (compile for an accelerator topology, --topology=v5p:4x4x8)",
        flush=True)
    return
  for target, chips, hbm in TARGETS:
    state = state_bytes / GIB / chips
    room = hbm - state - fixed
    fits = int(room // per_example) if per_example > 0 else 0
    per_chip = config.train.batch_size / chips
    micro = int(np.ceil(per_chip / fits)) if fits else None
    print(
        f"{name} | {target}: state {state:.2f} GiB/chip, fixed {fixed:.1f} GiB, room {room:.1f} GiB -> "
        f"{fits} examples per chip and microbatch; batch {config.train.batch_size} = {per_chip:g}/chip -> "
        f"grad_accum_steps {micro if micro else 'n/a (does not fit)'}",
        flush=True)


def main(argv):
  del argv
  for name in FLAGS.which.split(","):
    report(name)


if __name__ == "__main__":
  define_flags()
  app.run(main)
