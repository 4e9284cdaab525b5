"""starflow-jax: STARFlow / STARFlow-V normalizing-flow video generation in JAX."""

from starflow_jax.config import ModelConfig
from starflow_jax.model import FlowOutput, StarFlow, init_params

__all__ = ["ModelConfig", "StarFlow", "FlowOutput", "init_params"]
__version__ = "0.1.0"
