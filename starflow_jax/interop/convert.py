"""Convert between the official PyTorch STARFlow weights and a starflow_jax model directory.

  python -m starflow_jax.interop.convert official-to-jax --weights F.safetensors \
      --config config.json --out DIR
  python -m starflow_jax.interop.convert jax-to-official --checkpoint DIR --out G.safetensors

`--config` is a JSON file with the official `Model(...)` keyword arguments, either bare or under
"model_kwargs" (as in the golden config.json). The export writes G.safetensors (the official
state_dict, loadable with strict=True) and G.json (those keyword arguments).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax

from starflow_jax import checkpoint, fileio
from starflow_jax.config import ModelConfig
from starflow_jax.interop import official
from starflow_jax.interop.state_dict_io import read_state_dict, write_safetensors
from starflow_jax.model import init_params


def official_to_jax(weights: str, config_path: str, out: str, overwrite: bool = False) -> str:
  with open(config_path) as f:
    kwargs = json.load(f)
  config = ModelConfig.from_official_kwargs(kwargs)
  state_dict = read_state_dict(weights)
  shapes = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  params = official.import_official(config, state_dict, shapes)
  return checkpoint.save_model(out, config, params, overwrite=overwrite)


def jax_to_official(checkpoint_dir: str, out: str, overwrite: bool = False) -> tuple[str, str]:
  config, params = checkpoint.load_model(checkpoint_dir)
  state_dict = official.export_official(config, params)
  json_path = out[: -len(".safetensors")] + ".json" if out.endswith(".safetensors") else out + ".json"
  write_safetensors(out, state_dict, overwrite=overwrite)
  fileio.write_json(json_path, config.to_official_kwargs(), overwrite=overwrite)
  return out, json_path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m starflow_jax.interop.convert",
                                   description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  imp = sub.add_parser("official-to-jax", help="official state_dict -> orbax model directory")
  imp.add_argument("--weights", required=True, help=".safetensors or .pth official state_dict")
  imp.add_argument("--config", required=True, help="JSON with the official Model(...) kwargs")
  imp.add_argument("--out", required=True, help="model directory to create")
  imp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  exp = sub.add_parser("jax-to-official", help="orbax model directory -> official state_dict")
  exp.add_argument("--checkpoint", required=True, help="model directory (from official-to-jax "
                   "or a training export)")
  exp.add_argument("--out", required=True, help="output .safetensors (a .json is written beside)")
  exp.add_argument("--overwrite", action="store_true", help="replace outputs if they exist")
  args = parser.parse_args(argv)
  try:
    if args.command == "official-to-jax":
      path = official_to_jax(args.weights, args.config, args.out, args.overwrite)
      print(f"wrote model directory {path}")
    else:
      weights, kwargs = jax_to_official(args.checkpoint, args.out, args.overwrite)
      print(f"wrote {weights} and {kwargs}")
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
