"""spikeformer: spiking transformers in one toolkit.

>>> import spikeformer
>>> model = spikeformer.create_model("spikformer_cifar_4_384")
"""

from .errors import SpikeformerError
from .models import create_model, get_model_info, list_models

__version__ = "0.1.0"
__all__ = ["SpikeformerError", "create_model", "get_model_info", "list_models", "__version__"]
