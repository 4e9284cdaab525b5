"""The timing harness against the official sampler (experiments.bench_parity), without torch.

The official `transformer_flow` and torch are replaced by stand-ins: the fake model answers
each call with the golden array its arguments name, so the tests check what the harness asks
the official code for (condition, guidance, Jacobi settings per array name), that both samplers
must reproduce the recorded arrays before anything is timed, and the per-round ratios."""

import contextlib
import os
import types
from unittest import mock

import numpy as np
from absl.testing import absltest

from experiments import bench_parity
from starflow_jax.errors import UserError
from tests import helpers

FAKE_TORCH = types.SimpleNamespace(from_numpy=np.asarray,
                                   clone=np.copy,
                                   cat=lambda arrays, axis: np.concatenate(arrays, axis),
                                   no_grad=contextlib.nullcontext)


def fake_official(vectors_by_call: dict, calls: list, corrupt: str | None = None):
  """A stand-in `transformer_flow` module whose Model.reverse returns the golden array that its
  arguments name (recording them in `calls`); `corrupt` names an array it gets wrong."""

  class Model:

    def __init__(self, **kwargs):
      self.kwargs = kwargs

    def eval(self):
      return self

    def load_state_dict(self, state, strict):
      assert strict and state

    def reverse(self, z, y, guidance=0.0, jacobi=False, jacobi_block_size=None, jacobi_th=None, jacobi_max_iter=None):
      calls.append(dict(y_batch=None if y is None else y.shape[0], guidance=guidance, jacobi=jacobi))
      if jacobi:
        assert jacobi_max_iter == bench_parity.JACOBI_MAX_ITER
        name = f"sample.jacobi_b{jacobi_block_size}_th{jacobi_th:g}"
      else:
        name = f"sample.cfg{guidance:g}" if guidance > 0 else "sample.sequential"
      out = np.array(vectors_by_call[name])
      return out + 1.0 if name == corrupt else out

  return types.SimpleNamespace(Model=Model)


def golden_vectors(name: str) -> dict:
  with np.load(os.path.join(helpers.GOLDEN_DIR, name, "vectors.npz")) as data:
    return {k: data[k] for k in data.files}


class BenchParityTest(absltest.TestCase):

  def test_each_array_is_reproduced_then_timed_with_the_official_arguments(self):
    vectors, calls = golden_vectors("image_cond"), []
    rows = bench_parity.bench_folder(fake_official(vectors, calls), FAKE_TORCH,
                                     os.path.join(helpers.GOLDEN_DIR, "image_cond"), r"sample\.", 1, 1)
    self.assertEqual({r["array"] for r in rows},
                     {"sample.sequential", "sample.cfg2", "sample.jacobi_b4_th0.001", "sample.jacobi_b16_th1e-05"})
    batch = vectors["y"].shape[0]
    by_kind = {(c["guidance"], c["jacobi"], c["y_batch"]) for c in calls}
    # CFG doubles the condition with the null one; the others pass the condition as it is.
    self.assertEqual(by_kind, {(0.0, False, batch), (2.0, False, 2 * batch), (0.0, True, batch)})
    for row in rows:
      self.assertLessEqual(row["our_error"], bench_parity.TOLERANCE)
      self.assertGreater(row["speedup"], 0)
      self.assertLessEqual(row["worst"], row["speedup"])

  def test_a_sampler_that_misses_the_golden_array_is_not_timed(self):
    vectors = golden_vectors("image")
    with self.assertRaisesRegex(UserError, r"sample\.sequential: the samplers do not reproduce"):
      bench_parity.bench_folder(fake_official(vectors, [], corrupt="sample.sequential"), FAKE_TORCH,
                                os.path.join(helpers.GOLDEN_DIR, "image"), r"sample\.sequential", 1, 1)

  def test_speedup_is_the_median_of_per_round_ratios(self):
    # official calls take 10, 30, 20 s; ours 1, 2, 4 s (one call per round): ratios 10, 15, 5.
    durations = iter([10, 1, 30, 2, 20, 4])
    clock = [0.0]

    def perf_counter():
      return clock[0]

    def call():
      clock[0] += next(durations)

    with mock.patch("time.perf_counter", perf_counter):
      result = bench_parity.alternate(call, call, rounds=3, calls=1)
    self.assertEqual(result, dict(official_s=20, ours_s=2, speedup=10.0, worst=5.0))

  def test_a_folder_that_is_not_a_checkout_is_a_user_error(self):
    with self.assertRaisesRegex(UserError, "holds no transformer_flow.py"):
      bench_parity.import_official(self.create_tempdir().full_path)


if __name__ == "__main__":
  absltest.main()
