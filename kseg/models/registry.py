"""The architecture registry: one name per builder, so the CLI, tests and benchmarks need no if-chains."""

import dataclasses
from collections.abc import Callable

import keras

from kseg.errors import ArgumentError, KsegError


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable
    paper: str
    tiny: dict  # keyword arguments for a narrow, fast variant (tests, quick benchmarks)
    small: dict  # keyword arguments for small datasets (hundreds of images): narrower, generalises better


_ARCHITECTURES: dict[str, Architecture] = {}


def register(name: str, paper: str, tiny: dict | None = None, small: dict | None = None) -> Callable:
    """Decorator: `@register("unet", paper="...", tiny={...})` over a builder `f(num_classes, input_shape, ...)`.

    `tiny`: the narrowest useful variant (tests); `small`: the width `kseg train` picks for small datasets
    (default: the architecture's own width)."""

    def decorator(build):
        if name in _ARCHITECTURES:
            raise ArgumentError(f"architecture {name!r} is already registered")
        _ARCHITECTURES[name] = Architecture(name, build, paper, dict(tiny or {}), dict(small or {}))
        return build

    return decorator


def names() -> list[str]:
    """Names of every registered architecture, sorted."""
    return sorted(_ARCHITECTURES)


def architecture(name: str) -> Architecture:
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        raise KsegError(f"unknown model {name!r}; available: {', '.join(names())}") from None


def get(name: str, num_classes: int, input_shape: tuple = (None, None, 3), tiny: bool = False,
        **kwargs) -> keras.Model:
    """Builds the architecture `name`: `kseg.models.get("unet", num_classes=3, input_shape=(64, 64, 3))`.

    `tiny=True` starts from the architecture's narrow test configuration; `kwargs` override it.
    """
    arch = architecture(name)
    options = {**(arch.tiny if tiny else {}), **kwargs}
    return arch.build(num_classes, input_shape=input_shape, **options)
