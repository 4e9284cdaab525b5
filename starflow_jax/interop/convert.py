"""Convert between the official PyTorch STARFlow weights and a starflow_jax model directory.

  python -m starflow_jax.interop.convert official-to-jax --yaml configs/starflow-v_7B_t2v_caus_480p.yaml \
      --weights starflow-v_7B_t2v_caus_480p_v3.pth --out DIR [--vae WAN_DIR] [--t5 T5_DIR]
  python -m starflow_jax.interop.convert official-to-jax --weights F.safetensors --config config.json --out DIR
  python -m starflow_jax.interop.convert jax-to-official --checkpoint DIR --out G.safetensors|G.pth

`--yaml` is an official config (apple/ml-starflow `configs/*.yaml`): the model directory then also
records the release sampler's recipe (frames, fps, guidance, Jacobi, noise level, the learned
denoiser, the sliding window, the prompt template), the autoencoder (WAN 2.2 with its 0.6
temporal scale: `--vae`, a diffusers AutoencoderKLWan folder) and the text encoder (`--t5`, a
Hugging Face Flan-T5 folder); `experiments.sample` then samples it as the official sampler does.
`--config` is a JSON file with the official `Model(...)` keyword arguments only, bare or under
"model_kwargs" (as in the golden config.json). The export writes G.safetensors or G.pth (the
official state_dict, loadable with strict=True; the .pth is written without torch and reads with
torch.load(..., weights_only=True)) and G.json (those keyword arguments).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax

from starflow_jax import checkpoint, fileio
from starflow_jax.config import ModelConfig
from starflow_jax.errors import UserError
from starflow_jax.autoencoder import build_autoencoder
from starflow_jax.interop import official, official_recipe
from starflow_jax.interop.state_dict_io import read_state_dict, write_state_dict
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


def read_recipe(yaml_path: str, vae: str = "", t5: str = "") -> official_recipe.OfficialRecipe:
  """The official YAML's parts, with the local autoencoder and text-encoder folders checked."""
  t5_width = None
  if t5:
    t5_config = fileio.as_path(t5) / "config.json"
    if not t5_config.is_file():
      raise UserError(f"--t5 {t5} is not a Hugging Face T5 folder (no config.json)")
    t5_width = int(fileio.read_json(t5_config)["d_model"])
  recipe = official_recipe.read_recipe(yaml_path, vae_dir=vae, t5_dir=t5, t5_width=t5_width)
  if recipe.text_encoder is not None and t5_width is not None and t5_width != recipe.text_encoder.width:
    raise UserError(f"--t5 {t5} has width {t5_width} but {recipe.text_encoder.name} has "
                    f"{recipe.text_encoder.width}; give the encoder the config names")
  if vae:
    build_autoencoder(recipe.autoencoder)  # reads the folder's config: kind and factors checked
  return recipe


def official_to_jax(weights: str,
                    config_path: str | None,
                    out: str,
                    overwrite: bool = False,
                    *,
                    yaml_path: str | None = None,
                    vae: str = "",
                    t5: str = "",
                    recipe: official_recipe.OfficialRecipe | None = None) -> str:
  """Imports official weights into a model directory (with the recipe of an official YAML;
  `recipe`: that YAML already read by `read_recipe`)."""
  if (config_path is None) == (yaml_path is None):
    raise UserError("give the official config as --yaml CONFIG.yaml or as --config kwargs.json (one of them)")
  if (vae or t5) and yaml_path is None:
    raise UserError("--vae and --t5 go with --yaml (the JSON route records the architecture only)")
  if recipe is None and yaml_path:
    recipe = read_recipe(yaml_path, vae, t5)
  config = recipe.model if recipe else ModelConfig.from_official_kwargs(read_official_kwargs(config_path))
  if fileio.as_path(out).exists() and not overwrite:
    raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
  state_dict = read_state_dict(weights)
  shapes = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  params = official.import_official(config, state_dict, shapes)
  if recipe is None:
    return checkpoint.save_model(out, config, params, overwrite=overwrite)
  return checkpoint.save_model(out,
                               config,
                               params,
                               overwrite=overwrite,
                               autoencoder_config=recipe.autoencoder,
                               sampling_defaults=recipe.sampling_defaults,
                               t5=recipe.text_encoder)


def jax_to_official(checkpoint_dir: str, out: str, overwrite: bool = False) -> tuple[str, str]:
  suffix = next((s for s in (".safetensors", ".pth", ".pt") if out.endswith(s)), None)
  if suffix is None:
    raise UserError(f"--out {out} must end in .safetensors or .pth (its .json is written beside it)")
  json_path = out[:-len(suffix)] + ".json"
  for path in (out, json_path):  # both outputs checked before either is written
    if fileio.as_path(path).exists() and not overwrite:
      raise FileExistsError(f"{path} already exists; choose another --out or pass --overwrite")
  config, params = checkpoint.load_model(checkpoint_dir)
  state_dict = official.export_official(config, params)
  write_state_dict(out, state_dict, overwrite=overwrite)
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
  imp.add_argument("--yaml", help="official YAML config (apple/ml-starflow configs/*.yaml)")
  imp.add_argument("--config", help="JSON with the official Model(...) kwargs (instead of --yaml)")
  imp.add_argument("--vae", default="", help="with --yaml: the diffusers AutoencoderKLWan folder")
  imp.add_argument("--t5", default="", help="with --yaml: the Hugging Face Flan-T5 folder")
  imp.add_argument("--out", required=True, help="model directory to create")
  imp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  exp = sub.add_parser("jax-to-official", help="orbax model directory -> official state_dict")
  exp.add_argument("--checkpoint", required=True, help="model directory (from official-to-jax "
                   "or a training export)")
  exp.add_argument("--out", required=True, help="output .safetensors or .pth (a .json is written beside)")
  exp.add_argument("--overwrite", action="store_true", help="replace outputs if they exist")
  args = parser.parse_args(argv)
  try:
    if args.command == "official-to-jax":
      recipe = read_recipe(args.yaml, args.vae, args.t5) if args.yaml else None
      path = official_to_jax(args.weights,
                             args.config,
                             args.out,
                             args.overwrite,
                             yaml_path=args.yaml,
                             vae=args.vae,
                             t5=args.t5,
                             recipe=recipe)
      print(f"wrote model directory {path}")
      if recipe is not None:
        print(f"training-only arguments of {args.yaml} (not needed to sample): "
              f"{', '.join(recipe.training_only) or 'none'}")
    else:
      weights, kwargs = jax_to_official(args.checkpoint, args.out, args.overwrite)
      print(f"wrote {weights} and {kwargs}")
  except (UserError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
