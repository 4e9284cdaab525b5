"""Input-pipeline throughput: examples/s of the procedural source and an ArrayRecord latent
source, with 0 and 2 grain worker processes.

  python -m experiments.bench_data
"""

import tempfile
import time

from absl import app, flags

from data_pipeline import latents, pipeline, preencode, sources
from experiments.configs import tiny_video

FLAGS = flags.FLAGS


def define_flags():
  """Registers the flags of this command; called only when it runs as a program, so that
  every module can be imported into one process (tests) without clashing flag names."""
  flags.DEFINE_integer("batches", 40, "timed batches (after 2 warm-up batches)")
  flags.DEFINE_integer("examples_per_batch", 32, "examples per batch")


def throughput(source, transforms, workers: int) -> float:
  options = pipeline.PipelineOptions(batch_size=FLAGS.examples_per_batch, seed=0, worker_count=workers)
  iterator = iter(pipeline.build_dataset(source, options, transforms))
  for _ in range(2):
    next(iterator)
  start = time.perf_counter()
  for _ in range(FLAGS.batches):
    next(iterator)
  seconds = time.perf_counter() - start
  if hasattr(iterator, "close"):
    iterator.close()
  return FLAGS.batches * FLAGS.examples_per_batch / seconds


def main(argv):
  del argv
  config = tiny_video.get_config()
  source = sources.build_source(config.data)
  shapes_transforms = sources.element_transforms(config.data)
  with tempfile.TemporaryDirectory() as tmp:
    preencode.preencode(config, tmp, "train", num_examples=2048, shard_size=512, progress=False)
    latent_source = latents.LatentSource(tmp, "train")
    c = config.data
    print(f"shapes clips: {c.shapes.num_frames}x{c.shapes.height}x{c.shapes.width}x3 uint8; "
          f"latents: {latent_source[0]['video'].shape} float32; batch {FLAGS.examples_per_batch}")
    for workers in (0, 2):
      print(f"procedural shapes, {workers} workers: {throughput(source, shapes_transforms, workers):8.0f} examples/s",
            flush=True)
      print(
          f"ArrayRecord latents, {workers} workers: "
          f"{throughput(latent_source, sources.element_transforms(c), workers):8.0f} examples/s",
          flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
