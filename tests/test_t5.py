"""The Flax T5 encoder against transformers' PyTorch T5EncoderModel, built locally from a tiny
random T5Config (nothing downloaded). Runs only with the optional extra: torch + transformers
(+ sentencepiece for the tokenizer): pip install -e .[t5-parity]."""

import os

import numpy as np
from absl.testing import absltest, parameterized

from starflow_jax.text import t5

try:
  import torch
  import transformers
except ImportError:  # the optional extra is not installed
  torch = transformers = None


def _tiny_checkpoint(directory, feed_forward_proj, seed=0, full_model=False):
  torch.manual_seed(seed)
  config = transformers.T5Config(vocab_size=96,
                                 d_model=32,
                                 d_kv=8,
                                 d_ff=48,
                                 num_layers=3,
                                 num_heads=4,
                                 feed_forward_proj=feed_forward_proj,
                                 relative_attention_num_buckets=8,
                                 relative_attention_max_distance=20,
                                 dropout_rate=0.0)
  cls = transformers.T5ForConditionalGeneration if full_model else transformers.T5EncoderModel
  model = cls(config).eval()
  with torch.no_grad():  # non-trivial norms (HF initialises them to 1)
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(directory, safe_serialization=True)
  return model


@absltest.skipIf(torch is None, "optional extra not installed: pip install torch==2.13.0 transformers")
class T5ParityTest(parameterized.TestCase):

  @parameterized.parameters(("gated-gelu", False), ("relu", False), ("gated-gelu", True))
  def test_encoder_outputs_match_transformers(self, feed_forward_proj, full_model):
    directory = self.create_tempdir().full_path
    model = _tiny_checkpoint(directory, feed_forward_proj, full_model=full_model)
    config, params = t5.load_hf_t5(directory)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 96, (3, 30)).astype(np.int64)
    mask = np.ones_like(ids, bool)
    mask[1, 17:] = False  # padded rows
    mask[2, 5:] = False
    ids[~mask] = 0
    with torch.no_grad():
      encoder = model.encoder if full_model else model
      ref = encoder(input_ids=torch.from_numpy(ids),
                    attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state.numpy()
    ours = t5.T5Encoder(config).apply({"params": params}, ids.astype(np.int32), mask)
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=1e-4)

  def test_missing_weights_are_named(self):
    directory = self.create_tempdir().full_path
    _tiny_checkpoint(directory, "gated-gelu")
    from safetensors.numpy import load_file, save_file
    sd = load_file(os.path.join(directory, "model.safetensors"))
    del sd["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    save_file(sd, os.path.join(directory, "model.safetensors"))
    with self.assertRaisesRegex(ValueError, r"missing encoder\.block\.1\.layer\.1\.DenseReluDense\.wo\.weight"):
      t5.load_hf_t5(directory)


try:
  import sentencepiece
except ImportError:
  sentencepiece = None


@absltest.skipIf(torch is None or sentencepiece is None,
                 "optional extra not installed: pip install transformers sentencepiece")
class T5TokenizerTest(absltest.TestCase):

  def test_ids_match_transformers_tokenizer(self):
    directory = self.create_tempdir().full_path
    corpus = os.path.join(directory, "corpus.txt")
    with open(corpus, "w") as f:
      for i in range(200):
        f.write(f"a red circle moving left number {i} and a blue square moving down\n")
    sentencepiece.SentencePieceTrainer.train(input=corpus,
                                             model_prefix=os.path.join(directory, "spiece"),
                                             vocab_size=40,
                                             pad_id=0,
                                             eos_id=1,
                                             unk_id=2,
                                             bos_id=-1,
                                             model_type="unigram",
                                             minloglevel=2)
    ours = t5.T5Tokenizer(directory, max_length=12)
    ref = transformers.T5Tokenizer.from_pretrained(directory, extra_ids=0)
    texts = ["a red circle moving left", "", "a blue square moving down and a red circle moving left 17"]
    ids, mask = ours(texts)
    expected = ref(texts, padding="max_length", truncation=True, max_length=12)["input_ids"]
    np.testing.assert_array_equal(ids, np.asarray(expected))
    np.testing.assert_array_equal(mask, ids != 0)
    self.assertEqual(ids[1].tolist()[:2], [1, 0])  # the empty prompt is </s> then padding


if __name__ == "__main__":
  absltest.main()


@absltest.skipIf(torch is None or sentencepiece is None,
                 "optional extra not installed: pip install torch==2.13.0 transformers sentencepiece")
class T5PipelineTest(absltest.TestCase):
  """Pre-encode captions with a (tiny) T5, train from those latents, sample through T5."""

  def test_preencode_train_sample(self):
    from data_pipeline import latents, preencode
    from experiments.configs import tiny_video
    from starflow_jax import checkpoint, train_loop
    from starflow_jax.sampling import SamplingOptions, VideoSampler
    tmp = self.create_tempdir().full_path
    t5_dir = os.path.join(tmp, "t5")
    _tiny_checkpoint(t5_dir, "gated-gelu")
    with open(os.path.join(tmp, "corpus.txt"), "w") as f:
      for i in range(100):
        f.write("a red green blue yellow circle square triangle moving left right up down\n")
    sentencepiece.SentencePieceTrainer.train(input=os.path.join(tmp, "corpus.txt"),
                                             model_prefix=os.path.join(t5_dir, "spiece"),
                                             vocab_size=28,
                                             pad_id=0,
                                             eos_id=1,
                                             unk_id=2,
                                             bos_id=-1,
                                             minloglevel=2)
    config = tiny_video.get_config("micro")
    config.mesh.update(shape=(1, 1, 1))
    config.model.update(txt_dim=32)  # the tiny T5's d_model
    config.text.update(kind="none")
    lat = os.path.join(tmp, "latents")
    metadata = preencode.preencode(config, lat, "train", num_examples=8, shard_size=8, t5=t5_dir, progress=False)
    self.assertTrue(metadata["text_embeddings"])
    record = latents.LatentSource(lat)[0]
    self.assertEqual(record["text_embeddings"].shape, (config.model.txt_size, 32))
    self.assertEqual(latents.null_text_embedding(lat).shape, (config.model.txt_size, 32))
    config.data.update(source="latents", latents_dir=lat)
    config.train.update(num_steps=3, warmup_steps=1)
    train_loop.train_and_evaluate(config, os.path.join(tmp, "run"))
    bundle = checkpoint.load_bundle(os.path.join(tmp, "run", "model"))
    self.assertIsNone(bundle.text_config)
    np.testing.assert_array_equal(bundle.null_condition, latents.null_text_embedding(lat))  # trained against it
    sampler = VideoSampler(bundle,
                           SamplingOptions(progress=False, method="sequential", guidance=2.0),
                           text_encoder=t5.T5TextEncoder(t5_dir, config.model.txt_size))
    video = sampler.generate(["a red circle moving left"], 3)
    self.assertEqual(video.shape, (1, 3, 8, 8, 3))
    with self.assertRaisesRegex(ValueError, "--t5=DIR"):
      VideoSampler(bundle, SamplingOptions(progress=False)).generate(["a red circle"], 3)
