"""Attention masks as functions of positions, and block-wise (flash) attention over them.

A mask here is a small hashable description (`CausalMask`, the denoiser's `FrameBlockMask`):
`allowed(q, k)` says whether query q may attend to key k. The same object gives the dense
[Q, K] mask of short sequences and, block by block, the mask of `blockwise_attention`, which
never holds more than one [block_q, block_k] tile of logits: the official model trains the 7B
with PyTorch's flash `scaled_dot_product_attention`, and a 480p clip's dense logits (64 heads x
25,456^2 positions) would not fit any accelerator.

`blockwise_attention` is the flash algorithm (Dao et al. 2022) in plain JAX: an online softmax
over key blocks per query block, with a custom VJP whose backward recomputes each tile of
probabilities from the saved log-sum-exp instead of storing them. Tiles that the mask leaves
empty are skipped (causal masks: about half). Equal to dense attention up to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray
NEG_INF = -1e30


@dataclasses.dataclass(frozen=True)
class PositionMask:
  """Base of the position masks: `allowed(q, k)` broadcasts over integer position arrays (numpy
  or jax), with queries in [0, num_queries) and keys in [0, num_keys)."""

  def allowed(self, q, k, num_queries: int, num_keys: int):
    raise NotImplementedError

  def dense(self, num_queries: int, num_keys: int) -> Array:
    """[Q, K] bool, True = may attend."""
    return self.allowed(jnp.arange(num_queries)[:, None], jnp.arange(num_keys)[None, :], num_queries, num_keys)


@dataclasses.dataclass(frozen=True)
class CausalMask(PositionMask):
  """Query i sees keys j <= i + (K - Q): causal, with K - Q prefix keys seen by every query (the
  official tril with a prefix offset)."""

  def allowed(self, q, k, num_queries: int, num_keys: int):
    return k <= q + (num_keys - num_queries)


@functools.lru_cache(maxsize=64)
def _nonempty_tiles(mask: PositionMask, num_queries: int, num_keys: int, block_q: int, block_k: int) -> np.ndarray:
  """[nq, nk] bool: which tiles have at least one allowed (query, key) pair (padding excluded)."""
  nq, nk = -(-num_queries // block_q), -(-num_keys // block_k)
  k = np.arange(nk * block_k)[None, :]
  out = np.zeros((nq, nk), bool)
  for i in range(nq):
    q = np.arange(i * block_q, (i + 1) * block_q)[:, None]
    ok = np.asarray(mask.allowed(q, k, num_queries, num_keys)) & (q < num_queries) & (k < num_keys)
    out[i] = ok.reshape(block_q, nk, block_k).any(axis=(0, 2))
  return out


def _tile_mask(mask: PositionMask | None, i, j, block_q: int, block_k: int, num_queries: int, num_keys: int) -> Array:
  """[block_q, block_k] bool for tile (i, j): the mask and the padding."""
  q = i * block_q + jnp.arange(block_q)[:, None]
  k = j * block_k + jnp.arange(block_k)[None, :]
  ok = (q < num_queries) & (k < num_keys)
  if mask is not None:
    ok &= mask.allowed(q, k, num_queries, num_keys)
  return ok


def _pad_to(x: Array, length: int) -> Array:
  return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


def _tiles(x: Array, block: int) -> Array:
  """[B, L, H, D] -> [L / block, B, block, H, D] (L padded)."""
  b, length, h, d = x.shape
  n = -(-length // block)
  return jnp.moveaxis(_pad_to(x, n * block).reshape(b, n, block, h, d), 1, 0)


def _forward(q, k, v, mask, block_q, block_k):
  """(out [B, Q, H, Dh] in v.dtype, log-sum-exp [B, H, Q] float32)."""
  b, num_q, h, d = q.shape
  num_k = k.shape[1]
  scale = d**-0.5
  q_tiles, k_tiles, v_tiles = _tiles(q, block_q), _tiles(k, block_k), _tiles(v, block_k)
  nonempty = jnp.asarray(
      _nonempty_tiles(mask, num_q, num_k, block_q, block_k) if mask is not None else np.ones((q_tiles.shape[0],
                                                                                              k_tiles.shape[0]), bool))

  def query_tile(i):
    qi = q_tiles[i]  # [B, bq, H, Dh]

    def key_tile(carry, j):

      def update(carry):
        m, l, acc = carry  # [B, H, bq], [B, H, bq], [B, bq, H, Dh]
        s = jnp.einsum("bqhd,bkhd->bhqk", qi, k_tiles[j], preferred_element_type=jnp.float32) * scale
        ok = _tile_mask(mask, i, j, block_q, block_k, num_q, num_k)
        s = jnp.where(ok, s, NEG_INF)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)  # [B, H, bq, bk]
        correction = jnp.exp(m - m_new)
        acc = acc * jnp.swapaxes(correction, 1, 2)[..., None] + jnp.einsum(
            "bhqk,bkhd->bqhd", p.astype(v.dtype), v_tiles[j], preferred_element_type=jnp.float32)
        return m_new, l * correction + p.sum(-1), acc

      return jax.lax.cond(nonempty[i, j], update, lambda c: c, carry), None

    init = (jnp.full((b, h, block_q), NEG_INF, jnp.float32), jnp.zeros(
        (b, h, block_q), jnp.float32), jnp.zeros((b, block_q, h, d), jnp.float32))
    (m, l, acc), _ = jax.lax.scan(key_tile, init, jnp.arange(k_tiles.shape[0]))
    l = jnp.maximum(l, 1e-30)  # padded query rows see nothing
    return (acc / jnp.swapaxes(l, 1, 2)[..., None]).astype(v.dtype), m + jnp.log(l)

  out, lse = jax.lax.map(query_tile, jnp.arange(q_tiles.shape[0]))  # [nq, B, bq, H, Dh], [nq, B, H, bq]
  out = jnp.moveaxis(out, 0, 1).reshape(b, -1, h, d)[:, :num_q]
  lse = jnp.moveaxis(lse, 0, 2).reshape(b, h, -1)[:, :, :num_q]
  return out, lse


def _backward(mask, block_q, block_k, residuals, d_out):
  q, k, v, out, lse = residuals
  b, num_q, h, d = q.shape
  num_k = k.shape[1]
  scale = d**-0.5
  nq, nk = -(-num_q // block_q), -(-num_k // block_k)
  q_tiles, k_tiles, v_tiles = _tiles(q, block_q), _tiles(k, block_k), _tiles(v, block_k)
  do_tiles = _tiles(d_out, block_q)
  delta = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(jnp.float32), out.astype(jnp.float32))  # [B, H, Q]
  pad_q = nq * block_q - num_q
  delta_tiles = jnp.moveaxis(jnp.pad(delta, ((0, 0), (0, 0), (0, pad_q))).reshape(b, h, nq, block_q), 2, 0)
  lse_tiles = jnp.moveaxis(jnp.pad(lse, ((0, 0), (0, 0), (0, pad_q))).reshape(b, h, nq, block_q), 2, 0)
  nonempty = jnp.asarray(
      _nonempty_tiles(mask, num_q, num_k, block_q, block_k) if mask is not None else np.ones((nq, nk), bool))

  def query_tile(carry, i):
    dk, dv = carry  # [nk, B, bk, H, Dh] float32
    qi, doi, lse_i, delta_i = q_tiles[i], do_tiles[i], lse_tiles[i], delta_tiles[i]

    def key_tile(carry, j):

      def update(carry):
        dq, dk, dv = carry
        s = jnp.einsum("bqhd,bkhd->bhqk", qi, k_tiles[j], preferred_element_type=jnp.float32) * scale
        ok = _tile_mask(mask, i, j, block_q, block_k, num_q, num_k)
        p = jnp.where(ok, jnp.exp(s - lse_i[..., None]), 0.0)  # [B, H, bq, bk]
        dp = jnp.einsum("bqhd,bkhd->bhqk", doi, v_tiles[j], preferred_element_type=jnp.float32)
        ds = p * (dp - delta_i[..., None]) * scale
        dq = dq + jnp.einsum("bhqk,bkhd->bqhd", ds, k_tiles[j].astype(jnp.float32))
        dk = dk.at[j].add(jnp.einsum("bhqk,bqhd->bkhd", ds, qi.astype(jnp.float32)))
        dv = dv.at[j].add(jnp.einsum("bhqk,bqhd->bkhd", p, doi.astype(jnp.float32)))
        return dq, dk, dv

      return jax.lax.cond(nonempty[i, j], update, lambda c: c, carry), None

    init = (jnp.zeros((b, block_q, h, d), jnp.float32), dk, dv)
    (dq, dk, dv), _ = jax.lax.scan(key_tile, init, jnp.arange(nk))
    return (dk, dv), dq

  zeros = jnp.zeros((nk, b, block_k, h, d), jnp.float32)
  (dk, dv), dq = jax.lax.scan(query_tile, (zeros, zeros), jnp.arange(nq))
  untile = lambda x, n: jnp.moveaxis(x, 0, 1).reshape(b, -1, h, d)[:, :n]
  return (untile(dq, num_q).astype(q.dtype), untile(dk, num_k).astype(k.dtype), untile(dv, num_k).astype(v.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def blockwise_attention(q: Array,
                        k: Array,
                        v: Array,
                        mask: PositionMask | None = None,
                        block_q: int = 512,
                        block_k: int = 512) -> Array:
  """Softmax attention q [B, Q, H, Dh], k / v [B, K, H, Dh] -> [B, Q, H, Dh] under `mask`
  (None = full), in tiles: memory O((Q + K) H Dh + block_q block_k H) instead of O(Q K H).
  Scale head_dim^-0.5, logits and softmax in float32 (as `layers.attend`)."""
  return _forward(q, k, v, mask, block_q, block_k)[0]


def _vjp_forward(q, k, v, mask, block_q, block_k):
  out, lse = _forward(q, k, v, mask, block_q, block_k)
  return out, (q, k, v, out, lse)


blockwise_attention.defvjp(_vjp_forward, _backward)
