"""Defaults shared by every experiment config; each config overrides what it needs.

Field names follow the official code where it has them (model.*, train.noise_std, ...).
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Architecture: starflow_jax.config.ModelConfig fields (official Model(...) names).
  c.model = ml_collections.ConfigDict(
      dict(in_channels=3,
           img_size=16,
           patch_size=2,
           channels=64,
           num_blocks=3,
           layers_per_block=(1, 1, 4),
           head_dim=32,
           top_block_channels=128,
           rope=True,
           sos=True,
           use_softplus=True,
           use_final_norm=True,
           soft_clip=4.0,
           seq_order="L2R",
           txt_size=0,
           txt_dim=0,
           cond_top_only=False,
           temporal_causal=0,
           shallow_block_local=False,
           learnable_self_denoiser=False,
           conditional_denoiser=False,
           denoiser_window=None,
           denoiser_layers=8,
           num_classes=0,
           compute_dtype="float32",
           remat=False,
           attention_block_size=ml_collections.config_dict.placeholder(int),
           num_actions=0))

  # Built-in text encoder ('words' / 'bytes'), or 'none' (embeddings come with the data).
  # t5_path: a Hugging Face T5 / Flan-T5 directory whose frozen encoder embeds captions when
  # pre-encoding data (data_pipeline.preencode) and at sampling (experiments.sample --t5).
  c.text = ml_collections.ConfigDict(dict(kind="none", width=64, num_layers=1, head_dim=32, t5_path=""))

  c.autoencoder = ml_collections.ConfigDict(
      dict(kind="identity", scale=1.0, shift=0.0, checkpoint="", decode_chunk=8, encode_chunk=4, dtype="float32"))

  c.data = ml_collections.ConfigDict(
      dict(source="shapes",
           shapes=dict(num_frames=8,
                       height=16,
                       width=16,
                       min_objects=1,
                       max_objects=2,
                       shapes=("square", "circle", "triangle"),
                       colors=("red", "green", "blue", "yellow", "magenta", "cyan"),
                       min_radius=0.15,
                       max_radius=0.22,
                       min_speed=0.04,
                       max_speed=0.10,
                       free_frames=ml_collections.config_dict.placeholder(int),
                       num_examples=100_000,
                       seed=0),
           agent_world=dict(num_frames=8,
                            height=16,
                            width=16,
                            agent_radius=2.5,
                            step=2.0,
                            max_objects=1,
                            object_radius=2.5,
                            min_speed=0.6,
                            max_speed=1.4,
                            colors=("red", "green", "blue", "magenta"),
                            persistence=0.5,
                            num_examples=100_000,
                            seed=0),
           tfds=dict(name="",
                     split="train",
                     eval_split="",
                     data_dir="",
                     num_frames=8,
                     stride=1,
                     height=32,
                     width=32,
                     caption_template="",
                     random_flip=False),
           latents_dir="",
           digits_size=8,
           worker_count=0,
           read_threads=4,
           prefetch_buffer_size=8))

  c.train = ml_collections.ConfigDict(
      dict(
          batch_size=16,
          num_steps=1000,
          lr=1e-3,
          min_lr=1e-5,
          warmup_steps=100,
          b1=0.9,
          b2=0.95,
          weight_decay=1e-4,
          grad_clip=1.0,
          grad_skip=True,
          grad_skip_after=100,
          noise_std=0.1,
          dequantize=True,
          drop_label=0.1,
          drop_first_frame=0.0,
          latent_norm_reg=0.0,
          flow_score_matching=False,
          denoiser_lr=1e-4,
          denoiser_weight_decay=1e-4,
          init_from="",
          # Microbatches per optimizer step (the batch is split inside the compiled step; the update
          # equals the big-batch one); EMA of the parameters (exported as the model when > 0).
          grad_accum_steps=1,
          ema_decay=0.0))

  # Mesh axes (data, fsdp, tensor); -1 takes the remaining devices. Rules: logical -> mesh axis.
  c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), multihost=False))
  c.mesh.rules = ml_collections.config_dict.placeholder(list)

  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=500, keep=3, async_save=True))
  c.log = ml_collections.ConfigDict(
      dict(every_steps=25, sample_every_steps=0, num_samples=4, sample_prompts=(), progress=True))
  c.sample = ml_collections.ConfigDict(
      dict(method="auto",
           guidance=1.5,
           jacobi_block_size=16,
           jacobi_threshold=1e-3,
           jacobi_max_iter=32,
           denoise="auto",
           denoise_step=ml_collections.config_dict.placeholder(float)))
  return c
