"""Prepare a tensorflow-datasets dataset as ArrayRecord files (run once, with internet access).

  python -m data_pipeline.prepare_tfds --name=ucf101 --data_dir=/data/tfds

Downloads and builds the dataset with `file_format=array_record`, so that training reads it with
`tfds.data_source` (random access, no TensorFlow at training time). Building some datasets
(moving_mnist, ucf101) needs TensorFlow installed in the preparing environment only:
  pip install tensorflow-cpu
"""

from absl import app, flags

from data_pipeline.tfds_sources import spec_for

FLAGS = flags.FLAGS


def define_flags():
  """Registers the flags of this command; called only when it runs as a program, so that
  every module can be imported into one process (tests) without clashing flag names."""
  flags.DEFINE_string("name", None, "tfds dataset name, e.g. ucf101, moving_mnist, mnist")
  flags.DEFINE_string("data_dir", None, "where to write the prepared dataset")


def main(argv):
  del argv
  import tensorflow_datasets as tfds
  spec_for(FLAGS.name)  # supported?
  builder = tfds.builder(FLAGS.name, data_dir=FLAGS.data_dir, file_format="array_record")
  builder.download_and_prepare()
  print(f"prepared {FLAGS.name} in {builder.data_dir}: splits {list(builder.info.splits)}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["name", "data_dir"])
  app.run(main)
