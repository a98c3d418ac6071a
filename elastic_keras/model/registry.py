"""Backbone registry: where the exits go for each network of the paper (section III-B)."""

from dataclasses import dataclass

from elastic_keras.errors import ElasticKerasError

# train.precision (FIDELITY.md B8); named here, where no Keras is imported, for the config
# checks (FIDELITY.md R13). model/factory.py applies it.
PRECISIONS = ("float32", "mixed_bfloat16")

MOBILENET_ALPHAS = (0.25, 0.5, 0.75, 1.0)  # Keras' ImageNet weights exist for these
DEFAULT_DROPOUT = 0.2  # of every exit: not in the paper; the authors' scripts (FIDELITY.md M2)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and where its exits are.

    exits: named Keras layers after which an intermediate exit is attached, in depth order.
    final_pool: the final-head rule (PAPER.md section 2). True where Keras 2.1.5's
        `include_top=False` backbone had already average-pooled its top map (ResNet-50);
        the final exit then flattens the pooled vector. False: it flattens the raw map.
    top: the layer whose output the final head reads, where Keras 3's `include_top=False`
        model goes past where Keras 2.1.5's ended (DenseNet: `bn`, before Keras 3's
        `relu`); None: the model's output.
    """

    name: str
    paper_name: str
    constructor: str  # attribute of keras.applications
    exits: tuple
    final_pool: bool = False
    top: str | None = None
    min_input_size: int = 32  # Keras' own minimum (FIDELITY.md M10)
    alpha: float | None = None  # MobileNet width multiplier; None for the others
    note: str = ""  # where the exits go, in words (describe prints it)

    def weights_file(self, alpha=None, input_size=224):
        """File name of Keras' official ImageNet weights without the top for this backbone
        (as cached in ~/.keras/models/), so a folder of them can serve as `weights`."""
        if self.constructor == "MobileNet":
            a = self.alpha if alpha is None else alpha
            rows = input_size if input_size in (128, 160, 192, 224) else 224
            return f"mobilenet_{ {1.0: '1_0', 0.75: '7_5', 0.5: '5_0', 0.25: '2_5'}.get(a, a)}_{rows}_tf_no_top.h5"
        stem = {"DenseNet121": "densenet121", "DenseNet169": "densenet169",
                "InceptionV3": "inception_v3", "VGG16": "vgg16", "ResNet50": "resnet50"}
        return f"{stem[self.constructor]}_weights_tf_dim_ordering_tf_kernels_notop.h5"

    @property
    def num_outputs(self):
        return len(self.exits) + 1

    def build_backbone(self, input_size, weights, alpha=None, input_tensor=None):
        """The `include_top=False` Keras application at `input_size` x `input_size` x 3."""
        import keras

        kwargs = dict(include_top=False, weights=weights, input_shape=(input_size, input_size, 3),
                      input_tensor=input_tensor)
        if self.alpha is not None:
            kwargs["alpha"] = self.alpha if alpha is None else alpha
        base = getattr(keras.applications, self.constructor)(**kwargs)
        if self.top is None:
            return base
        return keras.Model(base.inputs, base.get_layer(self.top).output, name=base.name)


_DENSENET_EXITS = ("pool2_pool", "pool3_pool", "pool4_pool")
_RESNET50_ADDS = tuple(
    f"conv{stage}_block{block}_add"
    for stage, blocks in ((2, 3), (3, 4), (4, 6), (5, 3))
    for block in range(1, blocks + 1)
)
_MOBILENET_BLOCKS = tuple(f"conv_pw_{i}_relu" for i in range(1, 14))
_INCEPTION_BLOCKS = tuple(f"mixed{i}" for i in range(11))


def _spec(**kw):
    return BackboneSpec(**kw)


# The one mapping from name to spec. Exit layer names are Keras 3 names of the layers
# playing the roles in PAPER.md section 3 (auto-generated names are never used;
# FIDELITY.md M1, M4; the authors' variants: FIDELITY.md M8).
REGISTRY = {
    s.name: s
    for s in (
        # DenseNet's top is `bn`, as Keras 2.1.5's include_top=False model ended (FIDELITY.md M12).
        _spec(name="densenet121", paper_name="DenseNet-121", constructor="DenseNet121",
              exits=_DENSENET_EXITS, top="bn",
              note="exits after the average pooling of the 3 transition blocks"),
        _spec(name="densenet169", paper_name="DenseNet-169", constructor="DenseNet169",
              exits=_DENSENET_EXITS, top="bn",
              note="exits after the average pooling of the 3 transition blocks"),
        _spec(name="inceptionv3", paper_name="InceptionV3", constructor="InceptionV3",
              exits=_INCEPTION_BLOCKS[:-1], min_input_size=75,
              note="exits after the concatenation closing each Inception block but the last"),
        # Keras 3's MobileNet pads stride-2 convolutions otherwise than 2.1.5 (FIDELITY.md M14).
        _spec(name="mobilenet", paper_name="MobileNet", constructor="MobileNet",
              exits=_MOBILENET_BLOCKS[:-1], alpha=1.0,
              note="exits after the ReLU ending each depthwise-separable block but the last"),
        _spec(name="vgg16", paper_name="VGG-16", constructor="VGG16",
              exits=("block1_pool", "block2_pool", "block3_pool", "block4_pool"),
              note="exits after each max-pooling layer but the last"),
        # Keras 3's ResNet-50 pads before its first max-pool: 56x56 stage 2 (FIDELITY.md M13).
        _spec(name="resnet50", paper_name="ResNet-50", constructor="ResNet50",
              exits=_RESNET50_ADDS, final_pool=True,
              note="exits after the Add of each of the 16 residual blocks (before its ReLU)"),
        _spec(name="resnet50_5", paper_name="ResNet-50-5", constructor="ResNet50",
              exits=tuple(_RESNET50_ADDS[i - 1] for i in (2, 6, 9, 12)), final_pool=True,
              note="only the 2nd, 6th, 9th and 12th block exits of ResNet-50"),
        # The authors' scripts' variants (PAPER.md section 3, "known inconsistencies").
        _spec(name="mobilenet_authors", paper_name="MobileNet (authors' code)", constructor="MobileNet",
              exits=_MOBILENET_BLOCKS, alpha=0.75,
              note="authors' script: alpha 0.75 and an exit on the 13th block too (14 outputs)"),
        _spec(name="inceptionv3_authors", paper_name="InceptionV3 (authors' code)",
              constructor="InceptionV3", exits=_INCEPTION_BLOCKS, min_input_size=75,
              note="authors' script: an exit on the last Inception block too (12 outputs)"),
    )
}

# The seven models of the paper's Table I, in its row order.
TABLE1_BACKBONES = ("densenet121", "densenet169", "inceptionv3", "mobilenet", "vgg16",
                    "resnet50", "resnet50_5")


def get_spec(name):
    """Return the spec registered as `name`; unknown names list the valid ones."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ElasticKerasError(
            f"unknown backbone {name!r}; valid backbones: {', '.join(sorted(REGISTRY))}"
        ) from None
