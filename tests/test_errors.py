"""A user's mistake is one line, `error: ...`, exit status 2, before any work starts; never a
traceback. Each command runs its cases in one process (tests/cli_cases.py)."""

import json
import os
import subprocess
import sys
import tempfile

import jax
from absl.testing import absltest

from experiments.configs import tiny_video
from starflow_jax import experiment, sharding, train_loop
from starflow_jax.interop import official
from starflow_jax.interop.state_dict_io import write_safetensors
from starflow_jax.train import Trainer
from starflow_jax.train_checkpoint import export_model
from tests import helpers
from tests.multiprocess import REPO, process_env

MICRO = "--config=experiments/configs/tiny_video.py:micro"


def run_cases(module: str, cases: list[list[str]], tmp: str, extra_env: dict | None = None) -> list[dict]:
  cases_path, out_path = os.path.join(tmp, f"{module}.cases.json"), os.path.join(tmp, f"{module}.out.json")
  with open(cases_path, "w") as f:
    json.dump(cases, f)
  proc = subprocess.run([sys.executable, "-m", "tests.cli_cases", module, cases_path, out_path],
                        cwd=REPO,
                        env=process_env(1, extra=extra_env),
                        capture_output=True,
                        text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out_path) as f:
    return json.load(f)


class UserErrorTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory(prefix="user_errors_")
    cls.tmp = tmp = cls._tmp.name
    # A model directory of the micro config (random weights: nothing here samples).
    config = tiny_video.get_config("micro")
    config.mesh.update(shape=(1, 1, 1))
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    trainer = Trainer(config, mesh)
    cls.model = os.path.join(tmp, "model_run")
    export_model(cls.model,
                 trainer.init_state(0).params,
                 trainer.model_config,
                 trainer.text_config,
                 experiment.autoencoder_config(config),
                 train_loop.sampling_defaults(config),
                 name="model")
    cls.model = os.path.join(cls.model, "model")
    files = {
        "garbage.png": b"not a png",
        "garbage.gif": b"GIF89a broken",
        "notes.txt": b"hello",
        "bad.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{broken",
        "bad.pth": b"PK\x03\x04 not a zip",
        "bad.json": b"{not json",
        "a_file": b"x"
    }
    for name, data in files.items():
      with open(os.path.join(tmp, name), "wb") as f:
        f.write(data)
    golden = helpers.golden_video_bundle()[0]
    kwargs = golden.config.to_official_kwargs()
    with open(os.path.join(tmp, "partial.json"), "w") as f:
      json.dump({k: v for k, v in kwargs.items() if k not in ("channels", "num_blocks", "head_dim")}, f)
    with open(os.path.join(tmp, "official.json"), "w") as f:
      json.dump(kwargs, f)
    write_safetensors(os.path.join(tmp, "weights.safetensors"), official.export_official(golden.config, golden.params))

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def assert_user_errors(self, results: list[dict], expected: list[str]):
    self.assertLen(results, len(expected))
    for result, pattern in zip(results, expected):
      argv, lines = result["argv"], [l for l in result["stderr"].splitlines() if l.strip()]
      self.assertNotIn("Traceback", result["stderr"], argv)
      self.assertEqual(result["status"], 2, f"{argv}: {result['stderr'][-2000:]}")
      errors = [l for l in lines if l.startswith("error: ")]
      self.assertLen(errors, 1, f"{argv}: {lines}")
      self.assertEqual(lines[-1], errors[0], argv)  # nothing after it
      self.assertRegex(errors[0], pattern, argv)

  def test_training(self):
    workdir = os.path.join(self.tmp, "train")
    w = f"--workdir={workdir}"
    cases = [
        ([MICRO, w, "--config.mesh.multihost=True"], "JAX_COORDINATOR_ADDRESS=HOST:PORT"),
        ([w], "--config must have a value"),
        (["--config=experiments/configs/missing.py", w], "missing.py"),
        (["--config=experiments/configs/tiny_video.py:bogus", w], "unknown config argument 'bogus'"),
        ([MICRO, w, "--config.train.lr=-0.001"], r"config.train.lr=-0.001 must be >= 0"),
        ([MICRO, w, "--config.train.num_steps=0"], "num_steps=0 must be positive"),
        ([MICRO, w, "--config.train.warmup_steps=500"], "warmup_steps=500 must be < num_steps"),
        ([MICRO, w, "--config.model.patch_size=3"], "not divisible by patch_size=3"),
        ([MICRO, w, "--config.model.channels=abc"], "channels"),
        ([MICRO, w, "--config.train.nonexistent=1"], "nonexistent"),
        ([MICRO, w, "--config.mesh.shape=(2,1,1)"], r"needs 2 devices but 1"),
        ([MICRO, w, "--config.data.source=nope"], "unknown data.source 'nope'"),
        ([MICRO, w, "--config.train.grad_accum_steps=3"], "multiple of grad_accum_steps"),
        ([MICRO, w, "--config.train.ema_decay=1.5"], r"ema_decay=1.5 must be in \[0, 1\)"),
        ([MICRO, f"--workdir={os.path.join(self.tmp, 'a_file')}"], "is a file"),
        ([MICRO, w, "--config.train.init_from=/nonexistent/model"], "/nonexistent/model does not exist"),
    ]
    results = run_cases("experiments.main", [argv for argv, _ in cases], self.tmp)
    self.assert_user_errors(results, [pattern for _, pattern in cases])
    self.assertFalse(os.path.exists(os.path.join(workdir, "checkpoints")))  # nothing started

  def test_sampling(self):
    m = f"--workdir={self.model}"
    out = f"--out={os.path.join(self.tmp, 'out.mp4')}"
    long_prompt = "--prompt=" + " ".join(["a red circle moving left"] * 400)
    cases = [
        ([], "--workdir must have a value"),
        (["--workdir=/nonexistent"], "/nonexistent does not exist"),
        ([f"--workdir={self.tmp}"], "is neither a model directory nor a training workdir"),
        ([m, "--prompt=a red circle", "--out=video.avi"], r"--out video.avi must end in .mp4 or .gif"),
        ([m, "--prompt=a red circle", "--num_frames=0", out], "--num_frames=0 must be >= 1"),
        ([m, "--prompt=a red circle", "--num_frames=-3", out], "--num_frames=-3 must be >= 1"),
        ([m, "--prompt=a red circle", "--num_samples=0", out], "--num_samples=0 must be >= 1"),
        ([m, "--prompt=a red circle", "--mode=i2v", out], "--mode=i2v needs --input"),
        ([m, "--prompt=a", "--mode=t2v", "--input=/nonexistent.png", out], "--mode=t2v takes no --input"),
        ([m, "--prompt=a", "--mode=i2v", "--input=/nonexistent.png", out], "/nonexistent.png does not exist"),
        ([m, "--prompt=a", "--mode=i2v", f"--input={os.path.join(self.tmp, 'garbage.png')}",
          out], "garbage.png cannot be read as png"),
        ([m, "--prompt=a", "--mode=continue", f"--input={os.path.join(self.tmp, 'garbage.gif')}",
          out], "garbage.gif cannot be read as gif"),
        ([m, "--prompt=a", "--mode=i2v", f"--input={os.path.join(self.tmp, 'notes.txt')}",
          out], "unknown file type '.txt'"),
        ([m, out], "this model is conditioned: give --prompt"),
        ([m, long_prompt, out], r"tokens long but this model reads at most 16"),
        ([m, "--prompt=a", "--guidance=-1", out], "guidance=-1.0 must be >= 0"),
        ([m, "--prompt=a", "--method=bogus", out], "method"),
        ([m, "--prompt=a", "--jacobi_block_size=0", out], "block sizes must be positive"),
        ([m, "--prompt=a", "--window=0", out], "window=0 must be >= 1"),
        ([m, "--prompt=a", "--denoise=learned", "--noise_std=0", out], "needs the training noise level"),
    ]
    results = run_cases("experiments.sample", [argv for argv, _ in cases], self.tmp)
    self.assert_user_errors(results, [pattern for _, pattern in cases])
    self.assertEqual([f for f in os.listdir(self.tmp) if f.startswith("out")], [])  # nothing written

  def test_conversion(self):
    t = lambda name: os.path.join(self.tmp, name)
    imp = ["official-to-jax", "--config", t("official.json")]
    cases = [
        (["official-to-jax", "--config", t("official.json"), "--out",
          t("x")], "required: --weights"),
        (imp + ["--weights", t("missing.safetensors"), "--out", t("x")], "missing.safetensors does not exist"),
        (imp + ["--weights", t("bad.safetensors"), "--out", t("x")], "bad.safetensors is not a readable .safetensors"),
        (imp + ["--weights", t("bad.pth"), "--out", t("x")], r"bad.pth is not a zip-format|bad.pth is a damaged"),
        (imp + ["--weights", t("notes.txt"), "--out", t("x")], "unknown weights format"),
        (["official-to-jax", "--config",
          t("partial.json"), "--weights",
          t("weights.safetensors"), "--out",
          t("x")], r"lack \['channels', 'num_blocks'\]"),
        (["official-to-jax", "--config",
          t("bad.json"), "--weights",
          t("weights.safetensors"), "--out",
          t("x")], "is not valid JSON"),
        (imp + ["--weights", t("weights.safetensors"), "--out", self.model], "already exists"),
        (["jax-to-official", "--checkpoint", self.tmp, "--out",
          t("y.safetensors")], "is not a model directory"),
        (["jax-to-official", "--checkpoint", self.model, "--out",
          t("y.bin")], "must end in .safetensors or .pth"),
    ]
    results = run_cases("starflow_jax.interop.convert", [argv for argv, _ in cases], self.tmp)
    self.assert_user_errors(results, [pattern for _, pattern in cases])
    self.assertFalse(os.path.exists(t("x")))


if __name__ == "__main__":
  absltest.main()
