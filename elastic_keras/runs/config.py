"""Run configs: the paper's protocol in one place, the authors' protocol, profiles, overrides."""

import copy
import json
import os
import tomllib
from importlib import resources

from elastic_keras.errors import ElasticKerasError
from elastic_keras.model.registry import DEFAULT_DROPOUT, get_spec
from elastic_keras.runs.names import CIFAR_SETS, data_label

# The training protocol of the paper, section IV-A (PAPER.md section 6). A config file
# holds only what differs from this; every key here can be overridden with --set.
_PHASE = {
    "trainable": "all", "epochs": 1, "lr": 1e-3, "momentum": 0.9,  # SGD (FIDELITY.md T1)
    # ReduceLROnPlateau on val_loss, Keras' defaults, counted as Keras 2.1.5 did (T5)
    "reduce_lr": False, "factor": 0.1, "patience": 10, "cooldown": 0, "min_lr": 0.0,
    "min_delta": 1e-4, "counting": "keras2",
    # EarlyStopping on val_loss: not in the paper (the authors' scripts: T11)
    "early_stop": False, "stop_patience": 10, "stop_min_delta": 1e-4,
}
PROTOCOL = {
    "name": None,  # run name; defaults to the config file's stem
    "profile": "paper",
    "protocol": "paper",  # "authors": what the authors' scripts ran (PROTOCOLS)
    "model": {
        "backbone": None,
        "plain": False,  # True: the baseline "w/o Elastic Structure"
        "input_size": 224,  # or "min": the backbone's smallest legal input
        "dropout": DEFAULT_DROPOUT,  # not in the paper; the authors' scripts (M2)
        "alpha": None,  # MobileNet width multiplier; None: the registry's
        "weights": "imagenet",  # "imagenet", null, or a path to a local *_notop.h5
        "preprocess": "paper",  # "paper": [0, 1]; "authors": inception [-1, 1]
        "bn_momentum": None,  # None: the Keras applications' own (0.99); demo only (T8)
    },
    "data": {
        "dataset": "cifar10",
        "data_dir": None,  # local copy of the official files; None: keras.datasets
        "val_fraction": 0.2,  # 40,000 / 10,000 of the official training set
        "seed": 0,  # the split's seed
        "num_classes": None,  # None: the dataset's own; checked against it otherwise
        "train_limit": None,  # smoke runs: use this many official training images
        "test_limit": None,
    },
    # "uniform" (paper), "second_half" (Bai et al.), "auxnet", "auxnet_final", [w1, ...]
    "loss": {"weights": "uniform", "nu": 2.0},
    "train": {
        "seed": 0,
        "batch_size": 16,  # last partial batch kept (FIDELITY.md T6)
        "eval_batch_size": 64,  # validation and test passes (FIDELITY.md B6)
        "reload_best_between_phases": True,  # authors' scripts (FIDELITY.md T3)
        "backprop": "joint",  # or AuxNet's "multi_way", "multi_way_prestep" (L4)
        "steps_per_execution": 8,  # steps per compiled call; same numbers (FIDELITY.md B7)
        "precision": "float32",  # or "mixed_bfloat16" (FIDELITY.md B8)
    },
    # Phases are data: the loop runs them in this order (paper section IV-A).
    "phases": {
        "heads": {**_PHASE, "trainable": "heads", "epochs": 10},
        "full": {**_PHASE, "trainable": "all", "epochs": 100, "reduce_lr": True},
    },
}

# What the authors' scripts ran (yipersevere/Elastic at 644efea):
# FIDELITY.md A1, A2, A3, A4, A5; the plain scripts: FIDELITY.md A6; variants: FIDELITY.md A7.
_AUTHORS_PHASE = {"epochs": 100, "reduce_lr": True, "patience": 5, "cooldown": 1,
                  "min_lr": 1e-5, "early_stop": True, "stop_patience": 10}


def _both(**values):  # the same settings for both phases
    return {f"phases.{p}.{k}": v for p in ("heads", "full") for k, v in values.items()}


# elastic/main.py run without exits (A6): its recipe, not the plain scripts'.
_MAIN_SCRIPT_PLAIN = {"model.dropout": 0.2, "phases.heads.momentum": 0.9, "train.batch_size": 16,
                      "train.reload_best_between_phases": True, **_both(stop_min_delta=1e-4)}
PROTOCOLS = {
    "paper": {"all": {}, "plain": {}, "backbones": {}, "cells": {}},
    "authors": {
        "all": {"model.preprocess": "authors", "phases.full.momentum": 0.0,
                **_both(**_AUTHORS_PHASE)},
        # The per-backbone plain scripts (e.g. mobileNet/pretrain_MobileNet_CIFAR100.py).
        "plain": {"model.dropout": 0.0, "phases.heads.momentum": 0.0, "train.batch_size": 32,
                  "train.reload_best_between_phases": False, **_both(stop_min_delta=0.003)},
        "backbones": {"mobilenet": "mobilenet_authors", "inceptionv3": "inceptionv3_authors"},
        # Per cell (run name): the recipe behind its printed number (FIDELITY.md A6, A10, A11)
        "cells": {
            # inceptionV3/pretrain_InceptionV3_CIFAR100.py, as its stored run ran (A10)
            "cifar100-inceptionv3-plain": {"model.input_size": 139, **_both(
                epochs=1000, stop_min_delta=1e-3, stop_patience=15)},
            # inceptionV3/pretrain_ElasticNN_InceptionV3_CIFAR10_v1.py, but its start (A11)
            "cifar10-inceptionv3-elastic": {
                "train.batch_size": 32, "train.reload_best_between_phases": False,
                "phases.heads.momentum": 0.0, **_both(epochs=1000, stop_min_delta=0.003)},
            **dict.fromkeys(("cifar10-mobilenet-plain", "cifar10-mobilenet_authors-plain",
                             "cifar10-resnet50-plain", "cifar100-resnet50-plain"),
                            _MAIN_SCRIPT_PLAIN),
        },
    },
}

# Profiles shrink or adapt the same recipes; "paper" is the protocol itself.
PROFILES = {
    "paper": {},
    # CPU minutes: a few images, the smallest legal input, one or two epochs per phase.
    # ImageNet weights are off so it runs offline (WEIGHTS=imagenet puts them back).
    "smoke": {
        "model.input_size": "min", "model.weights": None,
        "data.train_limit": 200, "data.test_limit": 100,
        "phases.heads.epochs": 1, "phases.full.epochs": 2,
    },
    # The offline demo on scikit-learn's digits, from random initialisation (no ImageNet
    # weights offline), so it needs a larger learning rate than the paper's fine-tuning.
    "demo": {
        "model.input_size": "min", "model.weights": None, "data.dataset": "digits",
        "train.batch_size": 32, "model.bn_momentum": 0.9,
        "phases.heads.epochs": 1, "phases.heads.lr": 0.01,
        "phases.full.epochs": 6, "phases.full.lr": 0.01, "phases.full.patience": 3,
    },
}


def flatten(d, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _unknown(key, source):
    return ElasticKerasError(f"{source}: unknown key {key!r}; valid keys: "
                             f"{', '.join(sorted(flatten(PROTOCOL)))}")


def _set(cfg, key, value, source):
    """Set dotted `key` in `cfg`, refusing keys the protocol does not have."""
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise _unknown(key, source)
        node = node[part]
    if parts[-1] not in node or isinstance(node[parts[-1]], dict) and not isinstance(value, dict):
        raise _unknown(key, source)
    if value == {}:  # every override changes something or is refused (FIDELITY.md R14)
        raise ElasticKerasError(f"{source}: {key}={{}} sets no key; set {key}.KEY=VALUE")
    for k, v in value.items() if isinstance(value, dict) else ():
        _set(cfg, f"{key}.{k}", v, source)
    if not isinstance(value, dict):
        node[parts[-1]] = value


def parse_override(text):
    """`key=value` from the command line; the value is read as JSON when it parses."""
    if "=" not in text:
        raise ElasticKerasError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = {"none": None, "null": None, "true": True, "false": False}.get(raw.lower(), raw)
    return key.strip(), value


def packaged_configs():
    """{run name: config file} of the configs shipped with the package (one per table cell)."""
    folder = resources.files("elastic_keras.configs").joinpath("table1")
    return {p.name[:-len(".toml")]: p for p in folder.iterdir() if p.name.endswith(".toml")}


def read_toml(path):
    """A config file (a path, or a packaged config's name) as (run name, dict); one line if bad."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        packaged = packaged_configs()
        name = path.removesuffix(".toml")
        if os.sep in path or name not in packaged:
            raise ElasticKerasError(
                f"config file not found: {path}" if os.sep in path or path.endswith(".toml")
                else f"unknown config {path!r}: neither a file nor a packaged config "
                     "(python -m elastic_keras configs lists them)")
        path = packaged[name]
    try:
        with (open(path, "rb") if isinstance(path, str) else path.open("rb")) as f:
            return os.path.basename(str(path)).removesuffix(".toml"), tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ElasticKerasError(f"malformed config {path}: {e}") from None


def _chosen(given, key, pairs, file_flat, valid):
    """The profile or protocol: the argument, else --set, else the file, else "paper"."""
    value = given or dict(pairs).get(key) or file_flat.get(key) or "paper"
    if not isinstance(value, str) or value not in valid:
        raise ElasticKerasError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")
    return value


def load_config(path=None, overrides=(), profile=None, protocol=None):
    """Protocol <- the chosen protocol's changes <- profile <- config file <- overrides,
    resolved and validated. `path` is a TOML file (its stem names the run)."""
    cfg = copy.deepcopy(PROTOCOL)
    file_flat = {}
    if path is not None:
        cfg["name"], values = read_toml(path)
        file_flat = flatten(values)
    pairs = [parse_override(o) if isinstance(o, str) else tuple(o) for o in overrides]
    # Profile and protocol may come from the file or the command line; they apply beneath both.
    prof = _chosen(profile, "profile", pairs, file_flat, PROFILES)
    proto = _chosen(protocol, "protocol", pairs, file_flat, PROTOCOLS)
    cfg["profile"], cfg["protocol"] = prof, proto
    plain = dict(pairs).get("model.plain", file_flat.get("model.plain")) is True
    layers = [(PROTOCOLS[proto]["all"], f"protocol {proto}"),
              (PROTOCOLS[proto]["plain"] if plain else {}, f"protocol {proto} (plain)"),
              (PROTOCOLS[proto]["cells"].get(cfg["name"], {}), f"protocol {proto} (cell)"),
              (PROFILES[prof], f"profile {prof}"), (file_flat, path), (dict(pairs), "--set")]
    for values, source in layers:
        for key, value in values.items():
            if key not in ("profile", "protocol"):
                _set(cfg, key, value, source)
    backbone = cfg["model"]["backbone"]
    cfg["model"]["backbone"] = PROTOCOLS[proto]["backbones"].get(backbone, backbone)
    if "name" not in dict(pairs):
        cfg["name"] = named_by_data(cfg["name"], cfg["data"]["dataset"])
    validate(cfg)
    if cfg["model"]["alpha"] is None:  # resolved, so that a dry run and config.json say it
        cfg["model"]["alpha"] = get_spec(cfg["model"]["backbone"]).alpha
    return cfg


def named_by_data(name: str | None, dataset: str) -> str | None:
    """A table cell's run named by the data it sees: the cifar10-mobilenet-elastic config
    trained on digits is the run digits-mobilenet-elastic (on synthetic data,
    synthetic10-...; FIDELITY.md R7)."""
    first, _, rest = (name or "").partition("-")
    if first in CIFAR_SETS and dataset != first and rest:
        return f"{data_label(dataset, first)}-{rest}"
    return name


def validate(cfg):
    """Check types and ranges; return `cfg`. Bad values end in one clear message."""
    from elastic_keras.runs.validate import check_config

    check_config(cfg)
    return cfg
