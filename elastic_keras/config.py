"""Run configs: the paper's protocol in one place, profiles, config files and overrides."""

import copy
import json
import os
import tomllib

from .errors import ElasticKerasError

# The training protocol of the paper, section IV-A (PAPER.md section 6). A config file
# holds only what differs from this; every key here can be overridden with --set.
PROTOCOL = {
    "name": None,  # run name; defaults to the config file's stem
    "profile": "paper",
    "model": {
        "backbone": None,
        "plain": False,  # True: the baseline "w/o Elastic Structure"
        "input_size": 224,  # or "min": the backbone's smallest legal input
        "dropout": 0.2,  # not in the paper; the authors' scripts (FIDELITY.md M2)
        "alpha": None,  # MobileNet width multiplier; None: the registry's (1.0)
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
    "loss": {"weights": "uniform", "nu": 2.0},  # or "second_half", "auxnet", [w1, ...]
    "train": {
        "seed": 0,
        "batch_size": 16,
        "eval_batch_size": 64,
        "momentum": 0.9,
        "reload_best_between_phases": True,  # authors' scripts (FIDELITY.md T3)
    },
    # Phases are data: the loop runs them in this order (paper section IV-A).
    "phases": {
        "heads": {"trainable": "heads", "epochs": 10, "lr": 1e-3, "reduce_lr": False,
                  "factor": 0.1, "patience": 10},
        "full": {"trainable": "all", "epochs": 100, "lr": 1e-3, "reduce_lr": True,
                 "factor": 0.1, "patience": 10},
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

TRAINABLE = ("heads", "all")


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set(cfg, key, value, source):
    """Set dotted `key` in `cfg`, refusing keys the protocol does not have."""
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise ElasticKerasError(f"{source}: unknown key {key!r}; valid keys: "
                                    f"{', '.join(sorted(_flatten(PROTOCOL)))}")
        node = node[part]
    if parts[-1] not in node or isinstance(node[parts[-1]], dict) and not isinstance(value, dict):
        raise ElasticKerasError(f"{source}: unknown key {key!r}; valid keys: "
                                f"{', '.join(sorted(_flatten(PROTOCOL)))}")
    if isinstance(value, dict):
        for k, v in value.items():
            _set(cfg, f"{key}.{k}", v, source)
    else:
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


def load_config(path=None, overrides=(), profile=None):
    """Protocol <- profile <- config file <- overrides, resolved and validated."""
    cfg = copy.deepcopy(PROTOCOL)
    file_cfg = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ElasticKerasError(f"config file not found: {path}")
        try:
            with open(path, "rb") as f:
                file_cfg = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ElasticKerasError(f"malformed config {path}: {e}") from None
        cfg["name"] = os.path.splitext(os.path.basename(path))[0]
    pairs = [parse_override(o) if isinstance(o, str) else o for o in overrides]
    # The profile may come from the file or the command line; it applies beneath both.
    chosen = profile or dict(pairs).get("profile") or file_cfg.get("profile") or "paper"
    if chosen not in PROFILES:
        raise ElasticKerasError(f"unknown profile {chosen!r}; valid: {', '.join(PROFILES)}")
    cfg["profile"] = chosen
    for key, value in PROFILES[chosen].items():
        _set(cfg, key, value, f"profile {chosen}")
    for key, value in file_cfg.items():
        if key != "profile":
            _set(cfg, key, value, path)
    for key, value in pairs:
        if key != "profile":
            _set(cfg, key, value, "--set")
    return validate(cfg)


def validate(cfg):
    """Check types and ranges; return `cfg`. Bad values end in one clear message."""
    from .data import DATASETS
    from .losses import SCHEMES
    from .preprocessing import MODES
    from .registry import get_spec

    def bad(key, why):
        raise ElasticKerasError(f"config {key}: {why}, got {_get(cfg, key)!r}")

    m, d, t = cfg["model"], cfg["data"], cfg["train"]
    if not cfg["name"] or not isinstance(cfg["name"], str) or "/" in cfg["name"]:
        bad("name", "needs a run name without '/'")
    if m["backbone"] is None:
        bad("model.backbone", "is required")
    spec = get_spec(m["backbone"])
    if m["input_size"] == "min":
        m["input_size"] = spec.min_input_size
    if not isinstance(m["input_size"], int) or m["input_size"] < spec.min_input_size:
        bad("model.input_size", f"must be an integer >= {spec.min_input_size} or 'min'")
    if m["bn_momentum"] is not None and (not isinstance(m["bn_momentum"], float)
                                         or not 0 < m["bn_momentum"] < 1):
        bad("model.bn_momentum", "must be null or a number in (0, 1)")
    if not isinstance(m["plain"], bool):
        bad("model.plain", "must be true or false")
    if not isinstance(m["dropout"], (int, float)) or not 0 <= m["dropout"] < 1:
        bad("model.dropout", "must be in [0, 1)")
    if m["preprocess"] not in MODES:
        bad("model.preprocess", f"must be one of {MODES}")
    if m["weights"] not in ("imagenet", None) and not isinstance(m["weights"], str):
        bad("model.weights", "must be 'imagenet', null or a file path")
    if d["dataset"] not in DATASETS:
        bad("data.dataset", f"must be one of {DATASETS}")
    if not isinstance(d["val_fraction"], float) or not 0 < d["val_fraction"] < 1:
        bad("data.val_fraction", "must be a number in (0, 1)")
    for key in ("train_limit", "test_limit", "num_classes"):
        if d[key] is not None and (not isinstance(d[key], int) or d[key] < 2):
            bad(f"data.{key}", "must be null or an integer >= 2")
    w = cfg["loss"]["weights"]
    if not (w in SCHEMES or isinstance(w, list)):
        bad("loss.weights", f"must be one of {SCHEMES} or a list of numbers")
    for key in ("seed", "batch_size", "eval_batch_size"):
        if not isinstance(t[key], int) or t[key] < (0 if key == "seed" else 1):
            bad(f"train.{key}", "must be a non-negative integer" if key == "seed"
                else "must be a positive integer")
    if not isinstance(t["momentum"], (int, float)) or not 0 <= t["momentum"] < 1:
        bad("train.momentum", "must be in [0, 1)")
    if not cfg["phases"]:
        bad("phases", "needs at least one phase")
    for name, ph in cfg["phases"].items():
        if ph["trainable"] not in TRAINABLE:
            bad(f"phases.{name}.trainable", f"must be one of {TRAINABLE}")
        if not isinstance(ph["epochs"], int) or ph["epochs"] < 0:
            bad(f"phases.{name}.epochs", "must be an integer >= 0")
        if not isinstance(ph["lr"], (int, float)) or not ph["lr"] > 0:
            bad(f"phases.{name}.lr", "must be a positive number")
        if not isinstance(ph["patience"], int) or ph["patience"] < 1:
            bad(f"phases.{name}.patience", "must be a positive integer")
        if not isinstance(ph["factor"], (int, float)) or not 0 < ph["factor"] < 1:
            bad(f"phases.{name}.factor", "must be in (0, 1)")
    return cfg


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
