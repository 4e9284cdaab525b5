"""Logical axis names, in one place (as MaxText's `common_types`).

Parameters and activations name their dimensions with these; `sharding.DEFAULT_RULES` maps them
to the mesh axes (data, fsdp, tensor). Parameter axes shard the weights (FSDP along EMBED,
tensor parallel along HEADS / MLP); activation axes say how activations inside the compiled
train step are laid out: split over the batch (data x fsdp), and over heads / MLP units (tensor).

`constrain(x, names)` pins an activation's sharding while a train step is traced under
`activation_sharding(mesh, rules)` (what `train.Trainer` does) and is a no-op elsewhere (the
sampler, tests on one device, eager code).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

# Parameter axes.
EMBED = "embed"  # model width
MLP = "mlp"  # MLP hidden units
HEADS = "heads"  # attention heads
KV = "kv"  # per-head dimension
QKV = "qkv"  # the 3 of a fused q/k/v projection
PATCH = "patch"  # a token's latent patch (C * p * p)
TEXT = "text"  # text-embedding width
NORM = "norm"
CLASSES = "classes"
VOCAB = "vocab"
LENGTH = "length"  # positions of learned per-position parameters
BUCKETS = "buckets"  # T5's relative-position buckets
BATCH = "batch"  # the batch of inputs (data pipeline arrays)

# Activation axes.
ACT_BATCH = "activation_batch"
ACT_LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_HEADS = "activation_heads"
ACT_KV = "activation_kv"
ACT_MLP = "activation_mlp"

_CONTEXT: contextvars.ContextVar = contextvars.ContextVar("activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
  """While tracing inside this context, `constrain` pins activations to `mesh` by `rules`."""
  token = _CONTEXT.set((mesh, tuple(rules)))
  try:
    yield
  finally:
    _CONTEXT.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """x with its dimensions laid out by logical `names` (a dimension the mapped mesh axes do not
  divide stays replicated); unchanged outside `activation_sharding`."""
  context = _CONTEXT.get()
  if context is None:
    return x
  mesh, rules = context
  spec, _ = fit_spec(nn.logical_to_mesh_axes(tuple(names), rules), x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def fit_spec(spec: P, shape: Sequence[int], mesh: jax.sharding.Mesh) -> tuple[P, list[int]]:
  """(spec with every dimension its mesh axes do not divide replicated, those dimensions)."""
  fitted, replicated = [], []
  for dim, (size, mesh_axes) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
    names = () if mesh_axes is None else (mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,))
    if names and size % int(np.prod([mesh.shape[a] for a in names])):
      replicated.append(dim)
      mesh_axes = None
    fitted.append(mesh_axes)
  return P(*fitted), replicated
