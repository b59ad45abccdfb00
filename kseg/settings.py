"""Settings stated once: a dataclass field declared with `setting(...)` carries its command-line flag, help and
choices, and `add_flags` builds an argparse parser from the dataclass, destinations named as the fields.

    @dataclasses.dataclass
    class Settings:
        steps: int | None = setting(None, "training steps", kind=int)
    add_flags(parser, Settings); Settings(**given(parser.parse_args(), Settings))

`kseg.training.config.TrainConfig` (`kseg train`) and `kseg.deploy.modes.ExportSettings` (`kseg export`,
`kseg quantize-study`) are declared this way.
"""

import argparse
import dataclasses
from typing import Any

KINDS = ("size", "key=value", "list", "internal")  # kinds beyond a plain type; "internal": no flag


def setting(default: Any = None, help: str = "", *, flag: str | None = None, choices=None, kind: Any = None,
            metavar: str | None = None) -> Any:
    """A dataclass field and its flag: `help` (the default is appended unless the help says it), `flag` (default:
    `--` and the field name with dashes), `choices`, `kind` (the flag's type: `int`, `float`, "size" for
    `256` or `256x320`, "key=value" for repeated pairs, "list" for several values; default: the default's
    type, `str` for None), `metavar`."""
    meta = {"help": help, "flag": flag, "choices": choices, "kind": kind, "metavar": metavar}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def size(text: str) -> tuple[int, int]:
    """`128` or `256x320` as (height, width)."""
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) == 1:
        parts = parts * 2
    try:
        height, width = (int(p) for p in parts)
        return height, width
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 128 or 256x320, got {text!r}") from None


def add_flags(parser: argparse.ArgumentParser, settings_class: type) -> None:
    """A flag for every field of `settings_class` declared with `setting`. Defaults are None (booleans False): the
    dataclass's own default applies, and values read from a file stay unless a flag overrides them."""
    for field in dataclasses.fields(settings_class):
        meta = field.metadata
        if meta.get("kind") == "internal" or "help" not in meta:
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc,operator]
        text = meta["help"]
        if not (default is None or default is False or default in ((), [])) and "default" not in text:
            text += f"{' ' if text else ''}(default {default})"
        options = {"dest": field.name, "help": text.replace("%", "%%"), "default": None}
        if meta.get("metavar"):
            options["metavar"] = meta["metavar"]
        kind = meta.get("kind")
        if isinstance(default, bool):
            options.update(action="store_true", default=False)
        elif kind == "key=value":
            options["action"] = "append"
        else:
            options["type"] = size if kind == "size" else str if kind == "list" else \
                kind or (str if default is None else type(default))
            if kind == "list":
                options["nargs"] = "+"
            if meta.get("choices"):
                options["choices"] = list(meta["choices"])
        parser.add_argument(meta.get("flag") or "--" + field.name.replace("_", "-"), **options)


def given(args: argparse.Namespace, settings_class: type) -> dict:
    """{field: value} of the flags the user gave (a "list" field as a tuple)."""
    values = {}
    for field in dataclasses.fields(settings_class):
        value = getattr(args, field.name, None)
        if value is not None:
            values[field.name] = tuple(value) if field.metadata.get("kind") == "list" else value
    return values
