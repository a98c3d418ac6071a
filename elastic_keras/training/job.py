"""What a run trains (Job): its data, network, loss weights and trainer, all built from a config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from elastic_keras.errors import ElasticKerasError

# train.backprop: the summed loss, or AuxNet's as written, or the pre-step reading (L4)
BACKPROP = ("joint", "multi_way", "multi_way_prestep")


@dataclass
class Job:
    """What a run trains: its config, data, network, trainer, and where it runs."""

    cfg: dict[str, Any]
    data: Any  # data.splits.Data
    net: Any  # an ElasticModel
    trainer: Any  # ExitTrainer or a multi-way trainer
    env: dict[str, Any]
    weights: list[float]


def prepare(cfg: dict[str, Any], log=print, allow_cpu: bool = False) -> Job:
    """Accelerator, data, network (with its initial weights), loss weights and trainer of a
    config: all checked and built before the run directory is written (FIDELITY.md R4). A
    paper-profile run without a GPU stops here unless `allow_cpu`."""
    from elastic_keras.backend.environment import check_accelerator, describe, header
    from elastic_keras.backend.keras_internals import seed_everything
    from elastic_keras.data.datasets import load_data
    from elastic_keras.model.exits import exit_info
    from elastic_keras.model.factory import model_from_config
    from elastic_keras.training.loss_weights import loss_weights

    check_accelerator(cfg["profile"], allow_cpu)
    env = describe()
    log(f"[{cfg['name']}] {header(env)}")
    seed_everything(cfg["train"]["seed"])
    data = load_data(cfg["data"])
    net = model_from_config(cfg, data.num_classes, data.x_train.shape[1:])
    depths = [e.conv_layers for e in exit_info(net)]
    weights = loss_weights(cfg["loss"]["weights"], len(net.outputs), depths=depths,
                           nu=cfg["loss"]["nu"])
    trainer = make_trainer(net, weights, cfg["train"]["backprop"])
    log(f"[{cfg['name']}] {len(net.outputs)} outputs, loss weights "
        f"{[round(w, 4) for w in weights]}, {len(data.y_train)} train / {len(data.y_val)} "
        f"val / {len(data.y_test)} test images")
    return Job(cfg, data, net, trainer, env, weights)


def make_trainer(net: Any, loss_weights: list[float], backprop: str = "joint") -> Any:
    """The trainer of a run: "joint" backpropagation of the summed loss (the paper), or
    AuxNet's "multi_way" or "multi_way_prestep" (one update per output, in series:
    multiway.py, FIDELITY.md L4)."""
    if backprop in BACKPROP[1:]:
        from elastic_keras.training.multiway import multi_way_trainer

        return multi_way_trainer(net, loss_weights, backprop)
    if backprop != "joint":
        raise ElasticKerasError(f"train.backprop must be one of {', '.join(BACKPROP)}; "
                                f"received {backprop!r}")
    from elastic_keras.training.objective import ExitTrainer

    return ExitTrainer(net, loss_weights)
