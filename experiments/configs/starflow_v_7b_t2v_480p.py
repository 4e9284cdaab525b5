"""STARFlow-V 7B text-to-video at 480p (the official starflow-v_7B_t2v_caus_480p.yaml shapes).

  python -m experiments.main --config=experiments/configs/starflow_v_7b_t2v_480p.py \
      --workdir=gs://BUCKET/starflow_v_7b --config.data.latents_dir=gs://BUCKET/latents_480p

Trains from pre-encoded WAN 2.2 VAE latents (16x spatial, 4x temporal, 48 channels, scaled by
0.6; 81 frames at 16 fps -> 21 latent frames of 40x30 at 640x480) and Flan-T5-XL embeddings
(256 x 2048). 6 blocks, layers 2,2,2,2,2,24, shallow width 3072, deep width 4096, head 64,
noise 0.5, one frame of denoiser look-ahead (temporal_causal=2), denoiser window 10.
"""

from experiments.configs import base


def get_config(arg: str = ""):
  c = base.base_config()
  c.data.update(source="latents", latents_dir="", worker_count=8)
  c.model.update(
      in_channels=48,
      img_size=40,
      pt_seq_len=32,
      patch_size=1,
      channels=3072,
      top_block_channels=4096,
      num_blocks=6,
      layers_per_block=(2, 2, 2, 2, 2, 24),
      head_dim=64,
      txt_size=256,
      txt_dim=2048,
      cond_top_only=True,
      temporal_causal=2,
      shallow_block_local=True,
      learnable_self_denoiser=True,
      conditional_denoiser=True,
      denoiser_window=10,
      soft_clip=4.0,
      compute_dtype="bfloat16",
      remat=True,
      # Flash attention in tiles of 1024 tokens: a clip's dense logits (64 heads x 25,456^2
      # positions, 166 GB per layer) fit no accelerator (BENCHMARKS.md, 7B and 3B on paper).
      attention_block_size=1024)
  # Flan-T5-XL embeddings come with the pre-encoded data; the encoder itself (a local copy of
  # the Hugging Face google/flan-t5-xl directory) is read when pre-encoding and sampling.
  c.text.update(kind="none", t5_path="/data/hf/flan-t5-xl")
  # The WAN 2.2 VAE (diffusers layout, e.g. the vae/ folder of Wan-AI/Wan2.2-TI2V-5B-Diffusers)
  # encodes when pre-encoding and decodes samples: pass
  #   --config.autoencoder.checkpoint=/data/hf/wan2.2/vae
  # Training reads pre-encoded latents and never needs it.
  c.autoencoder.update(kind="wan2.2", scale=0.6, encode_chunk=2, decode_chunk=2, dtype="bfloat16")
  c.train.update(batch_size=192,
                 num_steps=300_000,
                 lr=5e-5,
                 min_lr=1e-6,
                 warmup_steps=5_000,
                 noise_std=0.5,
                 dequantize=False,
                 drop_label=0.1,
                 drop_first_frame=0.25,
                 flow_score_matching=True)
  c.mesh.update(shape=(1, -1, 1))  # FSDP over all chips; add tensor parallelism with (1, -1, 4)
  c.checkpoint.update(every_steps=1000, keep=5)
  c.log.update(every_steps=50, sample_every_steps=0)
  c.sample.update(guidance=2.5, jacobi_block_size=64, jacobi_threshold=1e-3, denoise="learned")
  if arg:
    raise ValueError(f"unknown config argument {arg!r}")
  return c
