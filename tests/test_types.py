"""The public API is annotated: every function and method a user reaches through a package's `__all__` states the
types of its arguments and its result (mypy, run by CI, checks what is annotated). Keras's own hooks (`call`,
`get_config`...) keep Keras's signatures."""

import importlib
import inspect

import pytest

PACKAGES = ["kseg", "kseg.models", "kseg.data", "kseg.losses", "kseg.metrics", "kseg.runtime", "kseg.training",
            "kseg.viz", "kseg.report"]
KERAS_HOOKS = {"call", "get_config", "build", "compute_output_shape", "from_config", "update_state", "result",
               "reset_state"}


def unannotated(function):
    """The parameters (and "return") of `function` that have no annotation."""
    signature = inspect.signature(function)
    missing = [name for name, p in signature.parameters.items() if name not in ("self", "cls")
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.annotation is inspect.Parameter.empty]
    if function.__name__ != "__init__" and signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def public_functions(package):
    module = importlib.import_module(package)
    for name in getattr(module, "__all__", [n for n in dir(module) if not n.startswith("_")]):
        value = getattr(module, name)
        if not getattr(value, "__module__", "").startswith("kseg"):
            continue
        if inspect.isfunction(value):
            yield name, value
        elif inspect.isclass(value) and not getattr(value, "_is_protocol", False):  # a Protocol declares only
            for attribute, member in vars(value).items():
                if inspect.isfunction(member) and attribute not in KERAS_HOOKS and (
                        not attribute.startswith("_") or attribute == "__init__"):
                    yield f"{name}.{attribute}", member


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_function_is_annotated(package):
    missing = {name: gaps for name, function in public_functions(package) if (gaps := unannotated(function))}
    assert not missing, f"{package}: unannotated {missing}"


def test_the_check_sees_a_gap():
    def plain(x, y: int = 0):
        return x

    assert unannotated(plain) == ["x", "return"]
