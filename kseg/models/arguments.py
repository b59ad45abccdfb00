"""Checks of builder arguments: a wrong value fails at once, in an ArgumentError (a KsegError and a ValueError)
that names the argument and what it takes, never deep inside a layer. Every builder starts with them:

    arguments.positive_int("filters", filters)
    arguments.one_of("upsampling", upsampling, UPSAMPLING)
"""

import numbers

from kseg.errors import ArgumentError


def positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ArgumentError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")


def positive_number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ArgumentError(f"{name} must be a positive number, got {value!r}")


def rate(name, value):
    """A dropout rate: 0 <= value < 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ArgumentError(f"{name} must be a rate in [0, 1), got {value!r}")


def one_of(name, value, choices):
    if value not in choices:
        raise ArgumentError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def positive_ints(name, values, count=None):
    """A sequence of positive integers (`count` of them when given)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ArgumentError(f"{name} must be a sequence of positive integers, got {values!r}")
    if count is not None and len(values) != count:
        raise ArgumentError(f"{name} must give {count} values, got {values!r}")
    for value in values:
        positive_int(name, value)


def options(name, value):
    if value is not None and not isinstance(value, dict):
        raise ArgumentError(f"{name} must be a dict of options or None, got {value!r}")


# Builder flags that make a graph compute another library's model, for its converted weights: such a model takes
# no ImageNet backbone weights of kseg's.
COMPATIBILITY_FLAGS = ("torchvision_compatible", "smp_compatible", "keras_hub_compatible")


def torchvision_compatible(value, backbone_weights):
    """A builder's `torchvision_compatible`: a bool, and then no `backbone_weights` (torchvision's weights come in
    through `kseg.models.convert`)."""
    _compatible("torchvision_compatible", "torchvision's", value, backbone_weights)


def smp_compatible(value, backbone_weights):
    """A builder's `smp_compatible`: a bool, and then no `backbone_weights` (segmentation_models_pytorch's weights
    come in through `kseg.models.convert`)."""
    _compatible("smp_compatible", "segmentation_models_pytorch's", value, backbone_weights)


def keras_hub_compatible(value, backbone_weights, pixel_scale, pixel_offset):
    """A builder's `keras_hub_compatible`: a bool, and then no `backbone_weights` (a keras-hub preset's weights come
    in through `kseg.models.convert`); `pixel_scale` and `pixel_offset` (its ImageConverter's `scale` and
    `offset`: None, a number, or one per RGB channel) only with it."""
    _compatible("keras_hub_compatible", "a keras-hub preset's", value, backbone_weights)
    for name, given in (("pixel_scale", pixel_scale), ("pixel_offset", pixel_offset)):
        if given is None:
            continue
        if not value:
            raise ArgumentError(f"{name} is a keras-hub preset's preprocessing: it needs keras_hub_compatible=True")
        values = [given] if isinstance(given, numbers.Real) else given
        if (isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) not in (1, 3)
                or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)):
            raise ArgumentError(f"{name} must be None, a number or 3 numbers (one per RGB channel), got {given!r}")


def _compatible(name, weights, value, backbone_weights):
    if not isinstance(value, bool):
        raise ArgumentError(f"{name} must be True or False, got {value!r}")
    if value and backbone_weights is not None:
        raise ArgumentError(f"{name} takes {weights} weights (kseg.models.convert), "
                            f"not backbone_weights={backbone_weights!r}")


def common(num_classes, name):
    """What every builder takes: a class count and a model name."""
    positive_int("num_classes", num_classes)
    if not isinstance(name, str) or not name:
        raise ArgumentError(f"name must be a non-empty string, got {name!r}")
