"""Exact likelihood and the training loss of the flow (ALGORITHM.md section 2).

With a standard normal prior on the final z and per-element log-dets -log(s) of every block,
  nll per dim = mean(0.5 z^2) + 0.5 log(2 pi) - (sum over blocks of sum logdet) / dims,
and the official loss drops the constant: loss = mean(0.5 z^2) - sum_blocks mean(logdet).
Every block's log-det tensor has one entry per data dimension, so its mean is sum / dims.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

Array = jnp.ndarray
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _per_example_mean(x: Array) -> Array:
  return jnp.mean(x.astype(jnp.float32), axis=tuple(range(1, x.ndim)))


def flow_loss_terms(z: Array, logdets: Sequence[Array], drop_first_frame: bool = False) -> tuple[Array, Array]:
  """Per-example (loss_z, loss_logdet), each [B]: 0.5 mean z^2 and -sum_blocks mean(logdet).

  With drop_first_frame (video continuation training), frame 0 is left out of both terms; z is
  [B, T, ...] and every log-det has a leading frame axis or a frame-major token axis of T*N.
  """
  if drop_first_frame:
    num_frames = z.shape[1]
    z = z[:, 1:]
    dropped = []
    for logdet in logdets:
      if logdet.ndim == 4:  # [B, T, N, D]
        dropped.append(logdet[:, 1:])
      else:  # [B, T*N, D], frame-major
        n = logdet.shape[1] // num_frames
        dropped.append(logdet[:, n:])
    logdets = dropped
  loss_z = 0.5 * _per_example_mean(jnp.square(z.astype(jnp.float32)))
  loss_logdet = -sum(_per_example_mean(ld) for ld in logdets)
  return loss_z, loss_logdet


def flow_loss(z: Array,
              logdets: Sequence[Array],
              weights: Array | None = None,
              drop_first_frame: bool = False) -> dict[str, Array]:
  """The official `get_loss`: {'loss', 'loss_z', 'loss_logdet'}, scalars averaged over the batch."""
  loss_z, loss_logdet = flow_loss_terms(z, logdets, drop_first_frame)
  loss = loss_z + loss_logdet
  if weights is not None:
    loss = loss * weights
  return {"loss": jnp.mean(loss), "loss_z": jnp.mean(loss_z), "loss_logdet": jnp.mean(loss_logdet)}


def nll_per_dim(z: Array, logdets: Sequence[Array]) -> Array:
  """Exact negative log-likelihood in nats per dimension, per example [B]."""
  loss_z, loss_logdet = flow_loss_terms(z, logdets)
  return loss_z + HALF_LOG_2PI + loss_logdet


def total_nll(z: Array, logdets: Sequence[Array]) -> Array:
  """Exact negative log-likelihood of each example in nats [B] (nll per dim times dims)."""
  dims = math.prod(z.shape[1:])
  return nll_per_dim(z, logdets) * dims


def frame_nll(z: Array, logdets: Sequence[Array]) -> Array:
  """Exact negative log-likelihood of each frame in nats, [B, T], for video z [B, T, H, W, C]:
  the frame's elements' 0.5 z^2 + log sqrt(2 pi) and its tokens' -log(scale) in every block. Every
  block is causal in frame order (the deep block across frames, the shallow blocks within a frame
  or in frame-major order), so frame t's share is exactly -log p(x_t | x_<t) and the shares sum
  to the clip's `total_nll`."""
  b, t = z.shape[:2]
  prior = 0.5 * jnp.square(z.astype(jnp.float32)) + HALF_LOG_2PI
  per_frame = jnp.sum(prior.reshape(b, t, -1), axis=-1)
  for logdet in logdets:  # [B, T, N, D] or frame-major [B, T*N, D]
    per_frame = per_frame - jnp.sum(logdet.astype(jnp.float32).reshape(b, t, -1), axis=-1)
  return per_frame


def bits_per_dim(nll_nats_per_dim: Array, num_bits: int = 8) -> Array:
  """Bits per dimension of `num_bits` data scaled to [-1, 1] with uniform dequantisation.

  Scaling {0..2^n-1} to [-1, 1] multiplies densities by 2^(n-1) per dimension, so
  bpd = (nll + log(2^(n-1))) / log 2.
  """
  return (nll_nats_per_dim + (num_bits - 1) * math.log(2.0)) / math.log(2.0)


def flow_score_target(x_grad: Array, noise_std: float) -> Array:
  """The flow-score-matching target from the gradient of the batch-mean flow loss w.r.t. x~.

  The loss is a mean over all B * dims elements of x~, so x_grad * x~.size is the gradient of each
  example's own total NLL, and the target is sigma * d NLL_b / d x~_b = -sigma * grad log p(x~_b)
  (the official `x.grad * x.numel() * noise_std`). Gradients are stopped.
  """
  return jax.lax.stop_gradient(x_grad * (x_grad.size * noise_std))
