"""Elastic neural networks (Zhou et al. 2018) in Keras 3: early exits on pretrained backbones."""

from .errors import ElasticKerasError

__version__ = "0.1.0"

# The public API, imported on first use so that `import elastic_keras` (and the command
# line's checks of bad input) stay fast and do not start the Keras backend.
_LAZY = {
    "BackboneSpec": "registry", "REGISTRY": "registry", "TABLE1_BACKBONES": "registry",
    "get_spec": "registry", "loss_weights": "losses", "ElasticModel": "models",
    "ExitInfo": "models", "build_model": "models", "elastify": "models",
    "exit_info": "models", "ExitTrainer": "trainer", "Cascade": "cascade",
    "truncated_predictor": "predictors",
}
__all__ = ["ElasticKerasError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
