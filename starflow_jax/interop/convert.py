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
from starflow_jax.errors import UserError
from starflow_jax.interop import official
from starflow_jax.interop.state_dict_io import read_state_dict, write_safetensors
from starflow_jax.model import init_params


def read_official_kwargs(config_path: str) -> dict:
  """The official Model(...) keyword arguments from a JSON file (bare or under 'model_kwargs')."""
  path = fileio.as_path(config_path)
  if not path.is_file():
    raise UserError(f"--config {config_path} does not exist")
  try:
    kwargs = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"--config {config_path} is not valid JSON ({e}); give the official Model(...) "
                    "keyword arguments as a JSON object") from None
  if not isinstance(kwargs, dict):
    raise UserError(f"--config {config_path} holds a {type(kwargs).__name__}, not a JSON object of "
                    "Model(...) keyword arguments")
  return kwargs


def official_to_jax(weights: str, config_path: str, out: str, overwrite: bool = False) -> str:
  config = ModelConfig.from_official_kwargs(read_official_kwargs(config_path))
  if fileio.as_path(out).exists() and not overwrite:
    raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
  state_dict = read_state_dict(weights)
  shapes = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  params = official.import_official(config, state_dict, shapes)
  return checkpoint.save_model(out, config, params, overwrite=overwrite)


def jax_to_official(checkpoint_dir: str, out: str, overwrite: bool = False) -> tuple[str, str]:
  if not out.endswith(".safetensors"):
    raise UserError(f"--out {out} must end in .safetensors (its .json is written beside it)")
  json_path = out[:-len(".safetensors")] + ".json"
  for path in (out, json_path):  # both outputs checked before either is written
    if fileio.as_path(path).exists() and not overwrite:
      raise FileExistsError(f"{path} already exists; choose another --out or pass --overwrite")
  config, params = checkpoint.load_model(checkpoint_dir)
  state_dict = official.export_official(config, params)
  write_safetensors(out, state_dict, overwrite=overwrite)
  fileio.write_json(json_path, config.to_official_kwargs(), overwrite=overwrite)
  return out, json_path


class _Parser(argparse.ArgumentParser):
  """argparse with a user's mistake as one line (`error: ...`, exit 2), no usage dump."""

  def error(self, message):
    print(f"error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def main(argv=None) -> int:
  parser = _Parser(prog="python -m starflow_jax.interop.convert", description=__doc__.split("\n\n")[0])
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
  except (UserError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
