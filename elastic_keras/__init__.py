"""Elastic neural networks (Zhou et al. 2018) in Keras 3: early exits on pretrained backbones."""

from .errors import ElasticKerasError
from .losses import loss_weights
from .models import ExitInfo, build_model, elastify, exit_info
from .registry import REGISTRY, TABLE1_BACKBONES, BackboneSpec, get_spec

__all__ = ["ElasticKerasError", "BackboneSpec", "ExitInfo", "REGISTRY", "TABLE1_BACKBONES",
           "build_model", "elastify", "exit_info", "get_spec", "loss_weights"]
__version__ = "0.1.0"
