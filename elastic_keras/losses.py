"""Exit loss weights: L_total = sum_i w_i * CE_i (paper eq. 2 and companion papers)."""

import math

from .errors import ElasticKerasError

SCHEMES = ("uniform", "second_half", "auxnet")


def loss_weights(scheme, num_outputs, depths=None, nu=2.0):
    """Weights of the `num_outputs` exit losses, in depth order (final exit last).

    - "uniform": w_i = 1 for every exit (the paper, section III-A).
    - "second_half": Bai et al.: w_p = 0 for p < ceil(P/2) (1-based), 1 after; this gives
      their first weighted exits 9 (ResNet-50, 17 outputs), 7 (MobileNet, 13), 6 (InceptionV3, 11).
    - "auxnet": AuxNet: final 1, exit k max(0.01, (L_k / L_K) ** nu), L_k the number of
      convolution layers up to exit k (`depths`).
    - a list/tuple of numbers: used as given; length and signs are checked.
    (FIDELITY.md L3.)
    """
    if num_outputs < 1:
        raise ElasticKerasError(f"num_outputs must be >= 1, got {num_outputs}")
    if isinstance(scheme, (list, tuple)):
        weights = [float(w) for w in scheme]
        if len(weights) != num_outputs:
            raise ElasticKerasError(
                f"loss weights: got {len(weights)} weights for a model with {num_outputs} outputs")
        if any(not math.isfinite(w) or w < 0 for w in weights):
            raise ElasticKerasError(f"loss weights must be finite and >= 0, got {weights}")
        if sum(weights) == 0:
            raise ElasticKerasError("loss weights are all zero: nothing would be trained")
        return weights
    if scheme == "uniform":
        return [1.0] * num_outputs
    if scheme == "second_half":
        first = math.ceil(num_outputs / 2)
        return [0.0 if p < first else 1.0 for p in range(1, num_outputs + 1)]
    if scheme == "auxnet":
        if depths is None or len(depths) != num_outputs:
            raise ElasticKerasError("loss weights 'auxnet' needs the depth of every exit")
        if not (nu > 0 and math.isfinite(nu)):
            raise ElasticKerasError(f"auxnet nu must be a positive number, got {nu}")
        last = depths[-1]
        return [max(0.01, (d / last) ** nu) for d in depths[:-1]] + [1.0]
    raise ElasticKerasError(
        f"unknown loss weights {scheme!r}; valid: {', '.join(SCHEMES)} or a list of numbers")
