"""The autoencoder interface: identity (pixel space), the small causal 3D VAE, the WAN 2.1 / 2.2
video VAE (diffusers checkpoints), and the shape facts of pretrained latent spaces without weights.

An autoencoder maps videos [B, T, H, W, C] in [-1, 1] to latents [B, T', H', W', C'] and back,
`encode(video)` / `decode(latents)`, with spatial / temporal compression factors and a latent
normalisation latents = (raw - shift) * scale (the official WAN 2.2 latents are scaled by 0.6,
after WAN's own per-channel normalisation (raw - latents_mean) / latents_std).
Learned autoencoders hold their own frozen parameters (loaded from `config.checkpoint`) and
decode long videos in chunks of latent frames so memory stays flat.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import jax
import jax.numpy as jnp

from starflow_jax.autoencoder import causal_vae, vae_checkpoint, wan_vae
from starflow_jax.errors import UserError

# Latent frames a decoded pixel frame can depend on, behind its own (causal_vae.Decoder: the res
# block at the latent rate reaches 4 frames back; the three pixel-rate stages and the output conv
# reach 14 pixel frames, i.e. under 4 latent frames).
DECODE_CONTEXT = 8


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  kind: str = "identity"
  scale: float = 1.0
  shift: float = 0.0
  checkpoint: str = ""  # parameters of learned autoencoders (an autoencoder directory)
  decode_chunk: int = 8  # latent frames per decoder call for long videos (causal VAEs)
  encode_chunk: int = 4  # latent frames per encoder call (WAN: 4 pixel frames each)
  dtype: str = "float32"  # compute dtype of learned autoencoders ('bfloat16' on accelerators)
  # Latent frames 1.. multiplied by this after normalisation, frame 0 (the image) left as it is:
  # the official STARFlow-V recipe's WAN 2.2 latents ('Wan-AI/Wan2.2-TI2V-5B-Diffusers:0.6').
  temporal_scale: float = 1.0

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "AutoencoderConfig":
    return cls(**d)

  def normalise(self, raw: jnp.ndarray) -> jnp.ndarray:
    """The autoencoder's own latents [B, T, H, W, C] -> the flow's: (raw - shift) * scale, then
    frames 1.. times temporal_scale."""
    return scale_later_frames((raw - self.shift) * self.scale, self.temporal_scale)

  def denormalise(self, latents: jnp.ndarray, first_frame: int = 0) -> jnp.ndarray:
    """The inverse of `normalise`; `first_frame`: the video frame index of latents[:, 0] (a chunk
    of a longer video: only the video's frame 0 escapes temporal_scale)."""
    return scale_later_frames(latents, 1.0 / self.temporal_scale, first_frame) / self.scale + self.shift


def scale_later_frames(latents: jnp.ndarray, factor: float, first_frame: int = 0) -> jnp.ndarray:
  """Latent frames 1.. of a video [B, T, H, W, C] times `factor`; frame 0 and single images
  unchanged. `first_frame` > 0: the latents are frames first_frame.. of a video (all scaled)."""
  if factor == 1.0 or latents.ndim != 5:
    return latents
  if first_frame > 0:
    return latents * factor
  if latents.shape[1] < 2:
    return latents
  return jnp.concatenate([latents[:, :1], latents[:, 1:] * factor], axis=1)


class ChunkedDecoder:
  """Latent frames in as they come, pixel frames out as soon as they are final, in the fixed
  chunks an autoencoder decodes a whole video in (so `decode` is this, fed everything at once,
  and a streamed video equals a decoded one exactly).

  step(latents, context, first_frame) decodes one chunk: `latents` [B, context + k, ...] are the
  chunk's k latent frames behind `context` earlier ones (at most `context_frames`), first_frame
  the video index of the chunk's first frame; it returns the chunk's own pixel frames. Chunk 0
  has `first_size` latent frames, later ones `size`; the last may be shorter (`finish`)."""

  def __init__(self, step, first_size: int, size: int, context_frames: int = 0):
    self.step, self.first_size, self.size, self.context_frames = step, first_size, size, context_frames
    self.pending, self.history, self.frames_done = [], [], 0

  def push(self, latents: jnp.ndarray) -> jnp.ndarray | None:
    """Latent frames [B, k, ...] -> the pixel frames they complete [B, k', ...] (None: none yet)."""
    out = []
    for i in range(latents.shape[1]):
      self.pending.append(latents[:, i:i + 1])
      if len(self.pending) == (self.first_size if self.frames_done == 0 else self.size):
        out.append(self._decode_pending())
    return jnp.concatenate(out, axis=1) if out else None

  def finish(self) -> jnp.ndarray | None:
    """The pixels of the last, shorter chunk (None when nothing is pending)."""
    return self._decode_pending() if self.pending else None

  def _decode_pending(self) -> jnp.ndarray:
    context = self.history[-self.context_frames:] if self.context_frames else []
    pixels = self.step(jnp.concatenate(context + self.pending, axis=1), len(context), self.frames_done)
    self.frames_done += len(self.pending)
    if self.context_frames:
      self.history = (self.history + self.pending)[-self.context_frames:]
    self.pending = []
    return pixels


def decode_whole(decoder: ChunkedDecoder, latents: jnp.ndarray) -> jnp.ndarray:
  """A whole video through a fresh `ChunkedDecoder`."""
  pieces = [p for p in (decoder.push(latents), decoder.finish()) if p is not None]
  return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=1)


def _on_mesh(autoencoder, mesh, lazy: tuple[str, ...]):
  """`autoencoder` with its weights for `mesh`: itself when the mesh is its own, else a copy that
  shares the configuration read from disk and loads (or places) the weights anew when used."""
  if mesh is getattr(autoencoder, "mesh", None):
    return autoencoder
  moved = copy.copy(autoencoder)
  moved.mesh = mesh
  for name in lazy:  # cached, placed for the other mesh
    moved.__dict__.pop(name, None)
  return moved


class IdentityAutoencoder:
  """Pixel space: latents are the (normalised) pixels themselves; no parameters."""

  spatial_factor = 1
  temporal_factor = 1

  def __init__(self, config: AutoencoderConfig):
    self.config = config

  def on_mesh(self, mesh):
    return self

  def latent_channels(self, channels: int) -> int:
    return channels

  def latent_frames(self, frames: int) -> int:
    return frames

  def encode(self, video: jnp.ndarray) -> jnp.ndarray:
    return self.config.normalise(video)

  def decode(self, latents: jnp.ndarray) -> jnp.ndarray:
    return self.config.denormalise(latents)

  def decoder(self) -> ChunkedDecoder:
    """Decodes latent frames one by one as they come (see `ChunkedDecoder`)."""
    return ChunkedDecoder(lambda x, context, first: self.config.denormalise(x, first), 1, 1)


class CausalVAEAutoencoder:
  """The small causal 3D VAE of `causal_vae.py`, frozen, from an autoencoder directory."""

  def __init__(self, config: AutoencoderConfig, mesh: jax.sharding.Mesh | None = None):
    if not config.checkpoint:
      raise UserError("autoencoder kind 'causal_vae' needs autoencoder.checkpoint: the directory "
                      "written by `python -m experiments.train_vae`")
    self.config = config
    self.mesh = mesh  # parameters replicated over it, so global (multi-host) batches decode
    # The config is read now (shape queries: training set-up, validation, sampling defaults); the
    # parameters only when something is encoded or decoded.
    self.vae_config = vae_checkpoint.load_config(config.checkpoint)
    self.module = causal_vae.CausalVAE(self.vae_config)
    self.spatial_factor = self.vae_config.spatial_factor
    self.temporal_factor = self.vae_config.temporal_factor
    self._check = functools.partial(causal_vae.check_frames, temporal_factor=self.temporal_factor)
    self._decode_chunk = jax.jit(lambda p, z: self.module.apply({"params": p}, z, method=causal_vae.CausalVAE.decode))

  @functools.cached_property
  def params(self):
    params = vae_checkpoint.load(self.config.checkpoint)[1]
    if self.mesh is not None:
      params = jax.device_put(params, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))
    return params

  def on_mesh(self, mesh: jax.sharding.Mesh | None):
    """This autoencoder with its weights replicated over `mesh` instead."""
    return _on_mesh(self, mesh, ("params",))

  def latent_channels(self, channels: int) -> int:
    return self.vae_config.latent_channels

  def latent_frames(self, frames: int) -> int:
    self._check(frames)
    return (frames - 1) // self.temporal_factor + 1

  def encode(self, video: jnp.ndarray) -> jnp.ndarray:
    self._check(video.shape[1])
    raw = self.module.apply({"params": self.params}, video, method=self.module.encode)
    return self.config.normalise(raw)

  def decode(self, latents: jnp.ndarray) -> jnp.ndarray:
    """Latents -> pixels, in chunks of `decode_chunk` latent frames, each with DECODE_CONTEXT
    earlier latent frames in front (the decoder's whole causal receptive field), of which only
    the chunk's own pixel frames are kept: memory stays flat, results are exact."""
    return decode_whole(self.decoder(), latents)

  def decoder(self) -> ChunkedDecoder:
    """Decodes latent frames as they come, `decode_chunk` at a time (see `ChunkedDecoder`)."""
    chunk = max(1, self.config.decode_chunk)

    def step(latents, context: int, first_frame: int):
      pixels = self._decode_chunk(self.params, self.config.denormalise(latents, first_frame - context))
      return pixels[:, -self.temporal_factor * (latents.shape[1] - context):] if first_frame else pixels

    return ChunkedDecoder(step, chunk, chunk, DECODE_CONTEXT)


class WanAutoencoder:
  """The WAN 2.1 / 2.2 causal video VAE (`wan_vae.py`) from a diffusers AutoencoderKLWan folder,
  encoding and decoding chunk by chunk with its feature cache (exact; memory flat in length).
  latents = ((mu - latents_mean) / latents_std - shift) * scale."""

  jit_inside = True  # encode / decode run their own compiled steps: call them outside jax.jit

  def __init__(self,
               config: AutoencoderConfig,
               expected_factors: tuple[int, int] | None = None,
               mesh: jax.sharding.Mesh | None = None):
    self.config = config
    self.mesh = mesh  # batches split over its (data, fsdp) axes, weights replicated
    self.vae_config = wan_vae.load_config(config.checkpoint)
    self.spatial_factor = self.vae_config.spatial_factor
    self.temporal_factor = self.vae_config.temporal_factor
    found = (self.spatial_factor, self.temporal_factor)
    if expected_factors and found != expected_factors:  # the checkpoint decides the channels
      raise UserError(f"{config.checkpoint} is a VAE compressing (spatial, temporal) by {found}, but "
                      f"autoencoder kind {config.kind!r} means {expected_factors}; set the matching kind")

  @functools.cached_property
  def runner(self):
    _, params = wan_vae.load_diffusers(self.config.checkpoint)
    return wan_vae.WanVAERunner(self.vae_config,
                                params,
                                jnp.dtype(self.config.dtype),
                                encode_chunk=self.config.encode_chunk,
                                decode_chunk=self.config.decode_chunk,
                                mesh=self.mesh)

  def on_mesh(self, mesh: jax.sharding.Mesh | None):
    """This autoencoder with its batches split over `mesh` instead."""
    return _on_mesh(self, mesh, ("runner",))

  def latent_channels(self, channels: int) -> int:
    return self.vae_config.z_dim

  def latent_frames(self, frames: int) -> int:
    causal_vae.check_frames(frames, self.temporal_factor)
    return (frames - 1) // self.temporal_factor + 1

  def encode(self, video: jnp.ndarray) -> jnp.ndarray:  # [B, T, H, W, 3] in [-1, 1]
    return self.config.normalise(self.runner.normalise(self.runner.encode(video)))

  def decode(self, latents: jnp.ndarray) -> jnp.ndarray:
    return decode_whole(self.decoder(), latents)

  def decoder(self) -> ChunkedDecoder:
    """Decodes latent frame 0, then `decode_chunk` frames at a time with the WAN feature cache
    (see `ChunkedDecoder`)."""
    steps = self.runner.chunk_decoder()
    return ChunkedDecoder(lambda x, context, first: steps(self.runner.denormalise(self.config.denormalise(x, first))),
                          1, self.runner.decode_chunk)


class PretrainedLatentSpace:
  """A latent space produced by a pretrained VAE outside this package (SD-VAE for images, WAN 2.2
  for video): its shape facts, for configs that train from pre-encoded latents. Encoding and
  decoding need that VAE's weights and code: pre-encode data and decode samples with the
  original VAE."""

  def __init__(self, config: AutoencoderConfig, spatial: int, temporal: int, channels: int):
    self.config = config
    self.spatial_factor, self.temporal_factor, self._channels = spatial, temporal, channels

  def on_mesh(self, mesh):
    return self

  def latent_channels(self, channels: int) -> int:
    return self._channels

  def latent_frames(self, frames: int) -> int:
    return (frames - 1) // self.temporal_factor + 1 if self.temporal_factor > 1 else frames

  def _unavailable(self, what):
    hint = ("set autoencoder.checkpoint to a diffusers AutoencoderKLWan folder (see WORKSPACE.md) or "
            if self.config.kind in _WAN else "")
    raise UserError(f"autoencoder kind {self.config.kind!r} without weights cannot {what}: {hint}train "
                    "from pre-encoded latents (data.source='latents') and decode samples with the "
                    "original VAE, or use kind 'identity' / 'causal_vae'")

  def encode(self, video):
    self._unavailable("encode")

  def decode(self, latents):
    self._unavailable("decode")


_PRETRAINED = {"sd_vae": (8, 1, 4), "wan2.1": (8, 4, 16), "wan2.2": (16, 4, 48)}
_WAN = ("wan2.1", "wan2.2")


def build_autoencoder(config: AutoencoderConfig, mesh: jax.sharding.Mesh | None = None):
  """The autoencoder of `config`. With a `mesh`, learned autoencoders keep their weights on all
  of its devices, so batches sharded over it (also across hosts) encode and decode; the WAN VAE,
  which runs its own compiled steps, splits its batches over the mesh's (data, fsdp) axes."""
  if config.kind == "identity":
    return IdentityAutoencoder(config)
  if config.kind == "causal_vae":
    return CausalVAEAutoencoder(config, mesh=mesh)
  if config.kind in _WAN and config.checkpoint:
    return WanAutoencoder(config, _PRETRAINED[config.kind][:2], mesh=mesh)
  if config.kind in _PRETRAINED:
    return PretrainedLatentSpace(config, *_PRETRAINED[config.kind])
  raise UserError(f"unknown autoencoder kind {config.kind!r}; available: 'identity', 'causal_vae', "
                  f"{', '.join(repr(k) for k in _PRETRAINED)}")
