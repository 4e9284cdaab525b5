"""Official YAML configs -> model directories sampled as the official sampler samples: the
argument mapping, the prompt template, the WAN 2.2 frame-0 rule, aspect-ratio sizes, and the
convert -> sample command line end to end (a tiny official-format checkpoint made here)."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from PIL import Image
from safetensors.numpy import save_file

from starflow_jax import checkpoint
from starflow_jax.autoencoder import AutoencoderConfig
from starflow_jax.autoencoder.base import scale_later_frames
from starflow_jax.errors import UserError
from starflow_jax.interop import convert, official, official_recipe
from starflow_jax.interop.state_dict_io import write_pth
from starflow_jax.sampling import SamplingOptions, VideoSampler, latent_size, options_from_defaults
from starflow_jax.text.prompts import PromptTemplate
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny video model in the official layout (configs/starflow-v_7B_t2v_caus_480p.yaml's fields).
TINY_VIDEO_YAML = """arguments:
- no_flip: 1
- fsdp: 1
- img_size: 8
- vid_size: '5:16'
- fps_cond: 1
- channel_size: 3
- patch_size: 2
- channels: 32
- top_block_channels: 64
- blocks: 3
- layers_per_block: 1 1 1
- head_dim: 32
- noise_std: 0.5
- batch_size: 192
- lr: 5e-5
- nvp: 1
- rope: 1
- adaln: 0
- sos: 1
- seq_order: L2R
- pt_seq_len: 4
- mix_aspect: 0
- use_softplus: 1
- cond_top_only: 0
- use_final_norm: 1
- learnable_self_denoiser: 1
- conditional_denoiser: 0
- denoiser_window: 2
- cond_noise_level: 1
- temporal_causal: 1
- shallow_block_local: 1
- cfg: 2.5
- drop_label: 0.1
- grad_clip: 1
- soft_clip: 4
"""


def sample_gif(test: absltest.TestCase, model_dir: str, out: str, *flags: str) -> Image.Image:
  """Runs `python -m experiments.sample` on a model directory; the GIF it wrote."""
  proc = subprocess.run([sys.executable, "-m", "experiments.sample", f"--workdir={model_dir}", f"--out={out}", *flags],
                        cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True,
                        text=True,
                        timeout=600)
  test.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
  return Image.open(out)


def write(path: str, text: str) -> str:
  with open(path, "w") as f:
    f.write(text)
  return path


class RecipeTest(absltest.TestCase):

  def test_the_official_video_layout_maps_to_model_sampling_and_template(self):
    yaml_path = write(
        os.path.join(self.create_tempdir().full_path, "c.yaml"),
        TINY_VIDEO_YAML + "- vae: Wan-AI/Wan2.2-TI2V-5B-Diffusers:0.6\n- text: google/flan-t5-small\n"
        "- txt_size: 6\n- mix_aspect: 1\n- img_size: 32\n- cond_top_only: 1\n")
    recipe = official_recipe.read_recipe(yaml_path, vae_dir="/vae", t5_dir="/t5")
    m = recipe.model
    self.assertEqual((m.in_channels, m.img_size, m.patch_size, m.channels, m.top_block_channels), (3, 2, 2, 32, 64))
    self.assertEqual((m.num_blocks, m.layers_per_block, m.temporal_causal, m.denoiser_window), (3, (1, 1, 1), 1, 2))
    self.assertEqual((m.txt_size, m.txt_dim, m.cond_top_only, m.shallow_block_local), (6, 512, True, True))
    self.assertEqual(recipe.autoencoder, AutoencoderConfig(kind="wan2.2", checkpoint="/vae", temporal_scale=0.6))
    self.assertEqual((recipe.text_encoder.name, recipe.text_encoder.path, recipe.text_encoder.width),
                     ("google/flan-t5-small", "/t5", 512))
    d = recipe.sampling_defaults
    self.assertEqual((d["num_frames"], d["latent_frames"], d["fps"], d["guidance"], d["noise_std"]),
                     (5, 2, 16, 2.5, 0.5))
    self.assertEqual((d["method"], d["jacobi_block_size"], d["jacobi_threshold"]), ("jacobi", 32, 1e-3))
    self.assertEqual((d["denoise"], d["denoise_step"], d["window"], d["context"]), ("learned", 0.3, 2, 1))
    self.assertEqual(d["prompt_template"], {"fps": True, "noise_level": True, "aspect_ratio": True})
    self.assertEqual(d["aspect_ratio"], "16:9")
    self.assertEqual(recipe.training_only,
                     ("adaln", "batch_size", "drop_label", "fsdp", "grad_clip", "lr", "no_flip", "nvp"))
    options = options_from_defaults(d)
    self.assertEqual((options.fps, options.aspect_ratio, options.prompt_template),
                     (16, "16:9", PromptTemplate(True, True, True)))

  def test_what_is_not_supported_is_named(self):
    tmp = self.create_tempdir().full_path
    cases = [
        ("- bogus_flag: 1\n", r"\['bogus_flag'\] are not known"),
        ("- noise_embed_denoiser: 1\n", "noise_embed_denoiser=1 is not implemented"),
        ("- vae: some/other-vae\n", "vae='some/other-vae' is not supported"),
        ("- finetuned_vae: px82zaheuu\n", "fine-tuned VAE decoders are not supported"),
        ("- text: gemma3_4b\n- txt_size: 4\n", "text='gemma3_4b' is not supported"),
        ("- use_swiglu: 1\n", "use_swiglu"),
    ]
    for i, (extra, pattern) in enumerate(cases):
      path = write(os.path.join(tmp, f"{i}.yaml"), TINY_VIDEO_YAML + extra)
      with self.assertRaisesRegex(UserError, pattern):
        official_recipe.read_recipe(path)
    with self.assertRaisesRegex(UserError, "needs an 'arguments:' list"):
      official_recipe.read_recipe(write(os.path.join(tmp, "flat.yaml"), "img_size: 8\n"))

  def test_the_prompt_template_is_the_official_text(self):
    template = PromptTemplate(fps=True, noise_level=True, aspect_ratio=True)
    self.assertEqual(template.apply(["a cat", ""], fps=16, noise_std=0.5, aspect_ratio="16:9"), [
        "Noise Level 500:\nA video with 16 fps:\na cat\n\n in a 16:9 aspect ratio.\n",
        "Noise Level 500:\nA video with 16 fps:\n\n\n in a 16:9 aspect ratio.\n"
    ])
    self.assertEqual(template.apply(["a cat"], fps=0, noise_std=0.3, aspect_ratio="1:1"),
                     ["Noise Level 300:\nAn image:\na cat\n\n in a 1:1 aspect ratio.\n"])
    self.assertEqual(PromptTemplate(fps=True).apply(["x"], fps=8, noise_std=0.1), ["A video with 8 fps:\nx\n"])
    self.assertEqual(PromptTemplate().apply(["x"], fps=8, noise_std=0.1), ["x"])
    self.assertEqual(PromptTemplate(noise_level=True).apply(["x"], fps=0, noise_std=0.0285), ["Noise Level 28:\nx"])

  def test_aspect_ratio_sizes_are_the_official_ones(self):
    self.assertEqual(latent_size(40, 16, 1, "16:9"), (30, 53))  # 640 px, WAN 2.2: 480 x 848 px
    self.assertEqual(latent_size(40, 16, 1, "9:16"), (53, 30))
    self.assertEqual(latent_size(40, 16, 1, "1:1"), (40, 40))
    self.assertEqual(latent_size(32, 8, 1, "3:2"), (26, 39))  # 256 px, SD-VAE: 209 -> 208, 313.5 -> 312
    with self.assertRaisesRegex(UserError, "trained on square clips only"):
      SamplingOptions(aspect_ratio="16:9").validate()

  def test_wan22_temporal_scale_leaves_frame_zero(self):
    config = AutoencoderConfig(temporal_scale=0.6, scale=2.0, shift=0.5)
    raw = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 4, 5))
    latents = config.normalise(raw)
    np.testing.assert_array_equal(latents[:, 0], (raw[:, 0] - 0.5) * 2.0)
    np.testing.assert_allclose(latents[:, 1:], (raw[:, 1:] - 0.5) * 2.0 * 0.6, rtol=1e-6)
    np.testing.assert_allclose(config.denormalise(latents), raw, rtol=1e-5, atol=1e-6)
    image = raw[:, :1]
    np.testing.assert_array_equal(config.normalise(image), (image - 0.5) * 2.0)  # images: unscaled
    np.testing.assert_array_equal(scale_later_frames(raw, 1.0), raw)


class TemplatedPromptsTest(absltest.TestCase):

  def test_the_text_encoder_reads_the_templated_prompt_and_null(self):
    config = helpers.tiny_video_config()
    bundle = checkpoint.ModelBundle(config, helpers.random_params(config))
    seen = []

    def encoder(prompts):
      seen.append(list(prompts))
      return jnp.zeros((len(prompts), config.txt_size, config.txt_dim))

    options = SamplingOptions(method="sequential",
                              guidance=1.0,
                              noise_std=0.25,
                              fps=16,
                              progress=False,
                              prompt_template=PromptTemplate(fps=True, noise_level=True))
    sampler = VideoSampler(bundle, options, text_encoder=encoder)
    sampler.generate(["a dog"], num_frames=2)
    sampler.generate(["a dog"], num_frames=1)
    wrong = VideoSampler(bundle, options, text_encoder=lambda p: jnp.zeros((len(p), config.txt_size, 3)))
    with self.assertRaisesRegex(UserError, r"embeddings of \[tokens, width\] = \[3, 3\] but the model reads \[3, 8\]"):
      wrong.generate(["a dog"], num_frames=2)
    self.assertEqual(
        seen, [["Noise Level 250:\nA video with 16 fps:\na dog\n"], ["Noise Level 250:\nA video with 16 fps:\n\n"],
               ["Noise Level 250:\nAn image:\na dog\n"], ["Noise Level 250:\nAn image:\n\n"]])


class ConvertAndSampleTest(absltest.TestCase):

  def test_official_yaml_and_weights_to_video_from_the_command_line(self):
    tmp = self.create_tempdir().full_path
    yaml_path = write(os.path.join(tmp, "tiny.yaml"), TINY_VIDEO_YAML)
    recipe = official_recipe.read_recipe(yaml_path)
    config = recipe.model
    weights = os.path.join(tmp, "tiny.safetensors")
    save_file(official.export_official(config, helpers.random_params(config)), weights)
    model_dir = os.path.join(tmp, "model")
    self.assertEqual(convert.main(["official-to-jax", "--yaml", yaml_path, "--weights", weights, "--out", model_dir]),
                     0)
    bundle = checkpoint.load_bundle(model_dir)
    self.assertEqual(bundle.config, config)
    self.assertEqual(bundle.sampling_defaults, recipe.sampling_defaults)
    image = os.path.join(tmp, "in.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 20, 3), np.uint8)).save(image)
    # T2V past the training length (the official --target_length: the window slides), and I2V.
    for mode, extra, frames in (("t2v", ["--target_length=7"], 7), ("i2v", ["--mode=i2v",
                                                                            f"--input_image={image}"], 5)):
      gif = sample_gif(self, model_dir, os.path.join(tmp, f"{mode}.gif"), *extra)
      self.assertEqual(gif.n_frames, frames)  # default: vid_size '5:16', pixel space
      self.assertAlmostEqual(gif.info["duration"], 1000 / 16, delta=10)  # the recipe's fps (GIF: 10 ms units)
      self.assertEqual(gif.size[1] % 8, 0)
    # --return_sequence: noise, the deep block's output and each shallow block's, side by side.
    stages = sample_gif(self, model_dir, os.path.join(tmp, "sequence.gif"), "--return_sequence")
    self.assertEqual(stages.size[0], (config.num_blocks + 1) * stages.size[1])

  def test_yaml_route_errors(self):
    tmp = self.create_tempdir().full_path
    yaml_path = write(os.path.join(tmp, "tiny.yaml"), TINY_VIDEO_YAML)
    with self.assertRaisesRegex(UserError, "one of them"):
      convert.official_to_jax("w.safetensors", "c.json", os.path.join(tmp, "o"), yaml_path=yaml_path)
    with self.assertRaisesRegex(UserError, "go with --yaml"):
      convert.official_to_jax("w.safetensors", "c.json", os.path.join(tmp, "o"), vae="/vae")
    with self.assertRaisesRegex(UserError, "not a Hugging Face T5 folder"):
      convert.read_recipe(yaml_path, t5=tmp)
    self.assertFalse(os.path.exists(os.path.join(tmp, "o")))


# A tiny release in the official layout: WAN 2.2 latents (0.6 temporal scale), a T5 text encoder,
# the prompt template of the 7B config (fps_cond, cond_noise_level).
TINY_RELEASE_YAML = """arguments:
- fsdp: 1
- img_size: 32
- vid_size: '5:8'
- fps_cond: 1
- channel_size: 6
- patch_size: 1
- channels: 32
- top_block_channels: 64
- blocks: 2
- layers_per_block: 1 1
- head_dim: 32
- noise_std: 0.5
- rope: 1
- sos: 1
- seq_order: L2R
- use_softplus: 1
- cond_top_only: 1
- use_final_norm: 1
- learnable_self_denoiser: 1
- conditional_denoiser: 1
- cond_noise_level: 1
- temporal_causal: 1
- shallow_block_local: 1
- vae: Wan-AI/Wan2.2-TI2V-5B-Diffusers:0.6
- finetuned_vae: none
- text: tiny/t5-encoder
- txt_size: 6
- cfg: 2.0
- soft_clip: 4
"""


def tiny_release(directory: str) -> dict[str, str]:
  """Writes the tiny release (YAML, official-format weights, a WAN 2.2 folder, a T5 folder with a
  sentencepiece model trained here on a few sentences); returns their paths."""
  import sentencepiece
  from starflow_jax.autoencoder import wan_vae
  from starflow_jax.text import t5
  from tests import test_wan_vae
  paths = {name: os.path.join(directory, name) for name in ("release.yaml", "weights.pth", "wan", "t5")}
  write(paths["release.yaml"], TINY_RELEASE_YAML)
  vae_config = wan_vae.WanVAEConfig(**test_wan_vae.TINY["2.2"])
  wan_vae.save_diffusers(paths["wan"], vae_config, test_wan_vae._random_params(vae_config))
  t5_config = t5.T5Config(vocab_size=40,
                          d_model=32,
                          d_kv=8,
                          d_ff=48,
                          num_layers=2,
                          num_heads=4,
                          relative_attention_num_buckets=8,
                          relative_attention_max_distance=20)
  t5_params = nn.unbox(
      t5.T5Encoder(t5_config).init(jax.random.PRNGKey(3), jnp.zeros((1, 6), jnp.int32), jnp.ones((1, 6),
                                                                                                 bool))["params"])
  t5.save_hf_t5(paths["t5"], t5_config, t5_params)
  corpus = write(os.path.join(directory, "corpus.txt"),
                 "a red green blue yellow circle square triangle moving left right up down\n" * 100)
  sentencepiece.SentencePieceTrainer.train(input=corpus,
                                           model_prefix=os.path.join(paths["t5"], "spiece"),
                                           vocab_size=28,
                                           pad_id=0,
                                           eos_id=1,
                                           unk_id=2,
                                           bos_id=-1,
                                           minloglevel=2)
  recipe = official_recipe.read_recipe(paths["release.yaml"], t5_width=32)
  write_pth(paths["weights.pth"], official.export_official(recipe.model, helpers.random_params(recipe.model)))
  return paths


class OfficialReleaseTest(absltest.TestCase):
  """The whole official path on a tiny release made here: convert (YAML + weights + WAN 2.2 +
  T5), then sample from the command line, text-to-video and image-to-video."""

  def test_release_to_video(self):
    tmp = self.create_tempdir().full_path
    paths = tiny_release(tmp)
    model_dir = os.path.join(tmp, "model")
    self.assertEqual(
        convert.main([
            "official-to-jax", "--yaml", paths["release.yaml"], "--weights", paths["weights.pth"], "--out", model_dir,
            "--vae", paths["wan"], "--t5", paths["t5"]
        ]), 0)
    bundle = checkpoint.load_bundle(model_dir)
    self.assertEqual((bundle.config.in_channels, bundle.config.img_size, bundle.config.txt_dim), (6, 2, 32))
    self.assertEqual((bundle.autoencoder_config.kind, bundle.autoencoder_config.temporal_scale), ("wan2.2", 0.6))
    self.assertEqual((bundle.t5.path, bundle.t5.max_length, bundle.t5.width), (paths["t5"], 6, 32))
    # The prompt the T5 reads, and its embedding zeroed at padding (the official encode_text).
    sampler = VideoSampler(bundle,
                           options_from_defaults(bundle.sampling_defaults, progress=False),
                           text_encoder=bundle.t5.build())
    self.assertEqual(
        sampler.prompt_texts(["a red circle"], 5),
        (["Noise Level 500:\nA video with 8 fps:\na red circle\n"], ["Noise Level 500:\nA video with 8 fps:\n\n"]))
    ids, mask = sampler.external_text_encoder.tokenizer(["a"])
    embedding = sampler.external_text_encoder(["a"])
    np.testing.assert_array_equal(np.asarray(embedding)[~mask], 0.0)
    self.assertGreater(float(np.abs(np.asarray(embedding)[mask]).max()), 0.0)
    image = os.path.join(tmp, "in.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 64, 3), np.uint8)).save(image)
    for mode, extra in (("t2v", []), ("i2v", [f"--input_image={image}"])):  # (as officially: an image means I2V)
      gif = sample_gif(self, model_dir, os.path.join(tmp, f"{mode}.gif"), "--prompt=a red circle moving left", *extra)
      self.assertEqual(gif.n_frames, 5)  # 2 WAN latent frames -> 1 + 4 pixel frames
      self.assertAlmostEqual(gif.info["duration"], 1000 / 8, delta=10)


class DigitsOfficialPresetTest(absltest.TestCase):
  """tiny_image.py:digits_official is the official architecture and recipe (the comparison in
  BENCHMARKS.md trains the official code the same way)."""

  def test_the_preset_is_the_official_recipe(self):
    from experiments.configs import tiny_image
    from starflow_jax import experiment
    config = tiny_image.get_config("digits_official")
    exp = experiment.Experiment.from_config(config)
    official = exp.model.to_official_kwargs()  # an official Model(...) exists for it: unconditional
    self.assertEqual((official["channels"], official["num_blocks"], official["patch_size"], official["head_dim"]),
                     (128, 4, 2, 32))
    self.assertEqual(official["layers_per_block"], [2, 2, 2, 2])
    step, opt = exp.step, exp.optimizer
    self.assertEqual((step.noise_std, step.dequantize, step.grad_clip, step.grad_skip), (0.0, True, 1.0, False))
    self.assertEqual((opt.lr, opt.min_lr, opt.b1, opt.b2, opt.weight_decay, opt.warmup_steps),
                     (5e-4, 0.0, 0.9, 0.95, 1e-4, 100))
    self.assertEqual((exp.loop.batch_size, opt.num_steps), (64, 3000))


if __name__ == "__main__":
  absltest.main()
