"""Elastic neural networks (Zhou et al. 2018) in Keras 3: early exits on pretrained backbones."""

from elastic_keras.errors import ElasticKerasError

__version__ = "0.1.0"

# The public API, imported on first use so that `import elastic_keras` (and the command
# line's checks of bad input) stay fast and do not start the Keras backend.
_LAZY = {
    "BackboneSpec": "model.registry", "REGISTRY": "model.registry",
    "TABLE1_BACKBONES": "model.registry", "get_spec": "model.registry",
    "build_model": "model.factory", "elastify": "model.factory",
    "ElasticModel": "model.exits", "ExitInfo": "model.exits", "exit_info": "model.exits",
    "loss_weights": "training.loss_weights", "ExitTrainer": "training.objective",
    "Cascade": "inference.cascade", "truncated_predictor": "inference.predictors",
    "RunDir": "runs.rundir", "load_config": "runs.config", "train": "runs.train",
}
__all__ = ["ElasticKerasError", *_LAZY]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
