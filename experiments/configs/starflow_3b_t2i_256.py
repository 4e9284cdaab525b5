"""STARFlow 3B text-to-image at 256x256 (the official starflow_3B_t2i_256x256.yaml shapes).

  python -m experiments.main --config=experiments/configs/starflow_3b_t2i_256.py \
      --workdir=gs://BUCKET/starflow_3b --config.data.latents_dir=gs://BUCKET/latents_256

Trains from pre-encoded SD-VAE latents (32x32x4) and Flan-T5-XL embeddings (128 x 2048),
written once by `python -m data_pipeline.preencode` (see WORKSPACE.md). 6 blocks, layers
2,2,2,2,2,24, width 3072, head 64, noise 0.3. Sized for a TPU pod slice (FSDP over `fsdp`).
"""

from experiments.configs import base


def get_config(arg: str = ""):
  c = base.base_config()
  c.data.update(source="latents", latents_dir="", worker_count=8)
  c.model.update(in_channels=4,
                 img_size=32,
                 patch_size=1,
                 channels=3072,
                 top_block_channels=None,
                 num_blocks=6,
                 layers_per_block=(2, 2, 2, 2, 2, 24),
                 head_dim=64,
                 txt_size=128,
                 txt_dim=2048,
                 cond_top_only=True,
                 soft_clip=4.0,
                 compute_dtype="bfloat16",
                 remat=True)
  # Flan-T5-XL embeddings come with the pre-encoded data; the encoder itself (a local copy of
  # the Hugging Face google/flan-t5-xl directory) is read when pre-encoding and sampling.
  c.text.update(kind="none", t5_path="/data/hf/flan-t5-xl")
  c.autoencoder.update(kind="sd_vae", scale=0.18215)
  c.train.update(batch_size=1024,
                 num_steps=500_000,
                 lr=6.4e-5,
                 min_lr=1e-6,
                 warmup_steps=10_000,
                 noise_std=0.3,
                 dequantize=False,
                 drop_label=0.1,
                 latent_norm_reg=1e-4)
  c.mesh.update(shape=(1, -1, 1))  # pure FSDP; e.g. (4, -1, 1) for data x FSDP on larger slices
  c.checkpoint.update(every_steps=2000, keep=5)
  c.log.update(every_steps=100, sample_every_steps=0)
  c.sample.update(guidance=2.5, jacobi_block_size=64, jacobi_threshold=1e-3)
  if arg:
    raise ValueError(f"unknown config argument {arg!r}")
  return c
