"""A resolved config checked once, key by key: every bad value ends in one message."""


from elastic_keras.checks import (
    check_bool, check_choice, check_int, check_number, is_number)
from elastic_keras.data.datasets import PREPROCESS_MODES as PREPROCESS
from elastic_keras.errors import ElasticKerasError
from elastic_keras.model.registry import PRECISIONS
from elastic_keras.model.registry import MOBILENET_ALPHAS
from elastic_keras.training.job import BACKPROP
from elastic_keras.training.loop import TRAINABLE



def _check_model(m, spec):
    if m["input_size"] == "min":
        m["input_size"] = spec.min_input_size
    check_int("model.input_size (or 'min')", m["input_size"], spec.min_input_size)
    check_bool("model.plain", m["plain"])
    check_number("model.dropout", m["dropout"], 0, 1)
    check_choice("model.preprocess", m["preprocess"], PREPROCESS)
    check_number("model.bn_momentum", m["bn_momentum"], 0, 1, low_open=True, optional=True)
    if m["weights"] is not None and (not isinstance(m["weights"], str) or not m["weights"]):
        raise ElasticKerasError(f"model.weights must be 'imagenet', null or a file path; "
                                f"received {m['weights']!r}")
    if m["alpha"] is not None:
        if spec.alpha is None:
            raise ElasticKerasError(f"model.alpha applies to MobileNet only, not to "
                                    f"{spec.name}; received {m['alpha']!r}")
        check_number("model.alpha", m["alpha"], 0, None, low_open=True)
        if m["weights"] == "imagenet" and m["alpha"] not in MOBILENET_ALPHAS:
            raise ElasticKerasError(f"model.alpha must be one of {MOBILENET_ALPHAS} with "
                                    f"ImageNet weights; received {m['alpha']!r}")


def _check_data(d):
    from elastic_keras.data.datasets import DATASETS

    check_choice("data.dataset", d["dataset"], DATASETS)
    if d["data_dir"] is not None and not isinstance(d["data_dir"], str):
        raise ElasticKerasError(f"data.data_dir must be null or a path; received {d['data_dir']!r}")
    check_number("data.val_fraction", d["val_fraction"], 0, 1, low_open=True)
    check_int("data.seed", d["seed"], 0)
    check_int("data.num_classes", d["num_classes"], 2, optional=True)
    check_int("data.train_limit", d["train_limit"], 2, optional=True)
    check_int("data.test_limit", d["test_limit"], 1, optional=True)


def _check_phase(name, ph):
    from elastic_keras.training.schedule import COUNTINGS

    p = f"phases.{name}."
    check_choice(p + "trainable", ph["trainable"], TRAINABLE)
    check_int(p + "epochs", ph["epochs"], 0)
    check_number(p + "lr", ph["lr"], 0, None, low_open=True)
    check_number(p + "momentum", ph["momentum"], 0, 1)
    check_bool(p + "reduce_lr", ph["reduce_lr"])
    check_number(p + "factor", ph["factor"], 0, 1, low_open=True)
    check_int(p + "patience", ph["patience"], 1)
    check_int(p + "cooldown", ph["cooldown"], 0)
    check_number(p + "min_lr", ph["min_lr"], 0, None)
    check_number(p + "min_delta", ph["min_delta"], 0, None)
    check_choice(p + "counting", ph["counting"], COUNTINGS)
    check_bool(p + "early_stop", ph["early_stop"])
    check_int(p + "stop_patience", ph["stop_patience"], 1)
    check_number(p + "stop_min_delta", ph["stop_min_delta"], 0, None)


def check_config(cfg):
    """Every key of a resolved config, with its type and range (config.PROTOCOL)."""
    from elastic_keras.training.loss_weights import SCHEMES
    from elastic_keras.model.registry import get_spec

    if not cfg["name"] or not isinstance(cfg["name"], str) or "/" in cfg["name"]:
        raise ElasticKerasError(f"config name must be a run name without '/'; "
                                f"received {cfg['name']!r}")
    if cfg["model"]["backbone"] is None:
        raise ElasticKerasError("config model.backbone is required")
    _check_model(cfg["model"], get_spec(cfg["model"]["backbone"]))
    _check_data(cfg["data"])
    w = cfg["loss"]["weights"]
    if not ((isinstance(w, str) and w in SCHEMES) or
            (isinstance(w, list) and w and all(is_number(x) for x in w))):
        raise ElasticKerasError(f"loss.weights must be one of {', '.join(SCHEMES)} or a list "
                                f"of numbers; received {w!r}")
    check_number("loss.nu", cfg["loss"]["nu"], 0, None)
    t = cfg["train"]
    check_int("train.seed", t["seed"], 0)
    check_int("train.batch_size", t["batch_size"], 1)
    check_int("train.eval_batch_size", t["eval_batch_size"], 1)
    check_bool("train.reload_best_between_phases", t["reload_best_between_phases"])
    check_choice("train.backprop", t["backprop"], BACKPROP)
    check_int("train.steps_per_execution", t["steps_per_execution"], 1)
    check_choice("train.precision", t["precision"], PRECISIONS)
    if not cfg["phases"]:
        raise ElasticKerasError("config phases: needs at least one phase")
    for name, ph in cfg["phases"].items():
        _check_phase(name, ph)
    return cfg
