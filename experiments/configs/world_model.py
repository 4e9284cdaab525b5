"""An action-conditioned world model of the agent environment (data_pipeline/agent_world.py).

  python -m experiments.main --config=experiments/configs/world_model.py --workdir=/tmp/world_model
  python -m experiments.rollout --workdir=/tmp/world_model --actions=SRRRDDLLUU --out=rollout.gif
  python -m experiments.eval_world_model --workdir=/tmp/world_model

16x16 RGB clips of 6 frames: a white square moved 2 pixels per frame by its action (stay, up,
down, left, right), a coloured circle bouncing around it. Pixel space, patch 4 (16 tokens a
frame: steps ~8x cheaper than patch 2, so 3000 of them take ~7 minutes on a 2-core CPU), no
text: the deep block reads each frame's action (model.num_actions = 5), dropped to the null
action for 10% of the clips, and sampling guides on it (guidance 2: controllability 0.92-0.94
against 0.86-0.91 unguided). Noise level 0.3 (BENCHMARKS.md: at 0.1 the samples are chaotic).
`:smoke` (10 steps) is for tests.
"""

from data_pipeline.agent_world import ACTIONS
from experiments.configs import base


def get_config(arg: str = ""):
  c = base.base_config()
  c.data.source = "agent_world"
  c.data.agent_world.update(num_frames=6, height=16, width=16, max_objects=1)
  c.model.update(in_channels=3,
                 img_size=16,
                 patch_size=4,
                 channels=64,
                 top_block_channels=96,
                 num_blocks=3,
                 layers_per_block=(1, 1, 3),
                 head_dim=32,
                 temporal_causal=2,
                 shallow_block_local=True,
                 learnable_self_denoiser=True,
                 denoiser_window=2,
                 denoiser_layers=2,
                 num_actions=len(ACTIONS))
  c.train.update(
      batch_size=16,
      num_steps=3000,
      lr=3e-3,
      min_lr=1e-3,
      warmup_steps=50,
      # 0.3, not the demo's 0.1: at 0.1 the learned inverse is chaotic on these flat
      # frames and rollouts smear into noise (controllability 0.20; BENCHMARKS.md).
      noise_std=0.3,
      drop_label=0.1,
      drop_first_frame=0.0,
      grad_skip=False,
      flow_score_matching=True,
      denoiser_lr=1e-3)
  c.checkpoint.update(every_steps=1000, keep=2)
  c.log.update(every_steps=25, sample_every_steps=0, num_samples=4)
  c.sample.update(method="sequential", guidance=2.0, jacobi_block_size=16, jacobi_threshold=1e-3)
  if arg == "smoke":  # the mechanics only (tests): a narrow one-layer-per-block model
    c.model.update(channels=32, top_block_channels=32, layers_per_block=(1, 1, 1), denoiser_layers=1)
    c.train.update(num_steps=10, warmup_steps=2, batch_size=4)
    c.checkpoint.update(every_steps=5)
    c.log.update(every_steps=1, progress=False)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use '' or 'smoke'")
  return c
