"""Writing videos for people: GIF, MP4 and PNG frame grids (with optional captions).

Videos are float arrays [T, H, W, C] in [-1, 1] (C = 1 or 3) or uint8. Small videos are
upscaled with nearest-neighbour so a 16x16 clip is visible. Every writer goes through a temporary
file and a rename (`fileio.write_file`; paths may be `gs://...`), so a failed write never
replaces an existing file with a broken one.
"""

from __future__ import annotations

import os
import warnings

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw

from starflow_jax import fileio


def to_uint8(video: np.ndarray) -> np.ndarray:
  """[-1, 1] float (or uint8) -> uint8 with 3 channels."""
  video = np.asarray(video)
  if video.dtype != np.uint8:
    video = np.clip(np.round((video.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
  if video.shape[-1] == 1:
    video = np.repeat(video, 3, axis=-1)
  if video.shape[-1] != 3:
    raise ValueError(f"expected 1 or 3 channels in the last axis, got shape {video.shape}; "
                     "decode latents to pixels before saving")
  return video


def from_uint8(video: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [-1, 1] (the models' pixel range; `to_uint8` inverts it)."""
  return np.asarray(video).astype(np.float32) / 127.5 - 1.0


def upscale(video: np.ndarray, min_side: int = 128) -> np.ndarray:
  """Nearest-neighbour upscaling by an integer factor until the short side is >= min_side."""
  h, w = video.shape[-3], video.shape[-2]
  factor = max(1, -(-min_side // min(h, w)))
  if factor == 1:
    return video
  return np.repeat(np.repeat(video, factor, axis=-3), factor, axis=-2)


def _atomic(path, write) -> str:
  path = fileio.as_path(path)
  fileio.write_file(path, write, suffix=path.suffix)
  return os.fspath(path)


def save_gif(path, video: np.ndarray, fps: int = 8, min_side: int = 128) -> str:
  frames = upscale(to_uint8(video), min_side)
  images = [Image.fromarray(f) for f in frames]
  return _atomic(
      path,
      lambda p: images[0].save(p, save_all=True, append_images=images[1:], duration=max(1, int(1000 / fps)), loop=0))


def save_png(path, frame: np.ndarray, min_side: int = 128) -> str:
  """One frame [H, W, C] in [-1, 1] as a PNG (upscaled as the videos are)."""
  image = Image.fromarray(upscale(to_uint8(frame[None]), min_side)[0])
  return _atomic(path, lambda p: image.save(p, format="PNG"))


def save_mp4(path, video: np.ndarray, fps: int = 8, min_side: int = 128) -> str | None:
  """Writes an H.264 MP4 with the ffmpeg binary bundled by imageio-ffmpeg; None if unavailable."""
  frames = upscale(to_uint8(video), min_side)
  h, w = frames.shape[1:3]
  frames = frames[:, :h - h % 16 or h, :w - w % 16 or w]  # macroblock-aligned for H.264

  def write(p):
    # imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp unless told not to: a Python
    # callback between fork and exec, unsafe in a threaded process (JAX's) and the cause of
    # JAX's "os.fork() was called" warning. Without it ffmpeg is a plain fork-exec.
    os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")
    imageio.mimsave(p, list(frames), fps=fps, macro_block_size=16, codec="libx264")

  try:
    return _atomic(path, write)
  except Exception as e:  # ffmpeg missing or failing: GIF and PNG are still written
    warnings.warn(f"could not write {path} ({type(e).__name__}: {e}); GIF/PNG outputs are unaffected")
    return None


def frame_grid(videos: np.ndarray,
               captions: list[str] | None = None,
               min_side: int = 64,
               max_frames: int = 16) -> np.ndarray:
  """[B, T, H, W, C] -> one uint8 image: a row per video (frames left to right), caption above."""
  videos = np.stack([upscale(to_uint8(v), min_side) for v in videos])[:, :max_frames]
  b, t, h, w, _ = videos.shape
  pad, text_h = 2, 14 if captions else 0
  canvas = np.full((b * (h + text_h + pad) + pad, t * (w + pad) + pad, 3), 255, np.uint8)
  for i in range(b):
    top = pad + i * (h + text_h + pad) + text_h
    for j in range(t):
      left = pad + j * (w + pad)
      canvas[top:top + h, left:left + w] = videos[i, j]
  image = Image.fromarray(canvas)
  if captions:
    draw = ImageDraw.Draw(image)
    for i, caption in enumerate(captions[:b]):
      draw.text((pad, pad + i * (h + text_h + pad)), caption, fill=(0, 0, 0))
  return np.asarray(image)


def save_grid_png(path, videos: np.ndarray, captions: list[str] | None = None) -> str:
  grid = frame_grid(videos, captions)
  return _atomic(path, lambda p: Image.fromarray(grid).save(p, format="PNG"))
