"""Which kseg modules one `kseg export` call runs code of (the layout's "at most 8 modules" target: 9 since the
int8 graph rewrites have a module of their own), measured.

    python benchmarks/export_path.py [--modes float32 int8]

Trains a tiny U-Net for a few steps (a real checkpoint with its run folder), then runs `kseg export` on it in
this process with `sys.setprofile` recording the module of every kseg function that runs (module bodies run by
an import, and what they call, are not counted). Utilities (errors, console, files, provenance, settings) are
listed apart (every layer may use them), and so are the data loaders, which only the calibrating modes need, and
the model's own layers, which Keras runs to deserialise the checkpoint.
"""

import argparse
import os
import sys
import tempfile

UTILITIES = {"kseg", "kseg.errors", "kseg.console", "kseg.files", "kseg.provenance", "kseg.settings", "kseg.report",
             "kseg.viz", "kseg.complexity"}  # the bottom layer of tests/test_structure.py


def role(module):
    if module in UTILITIES:
        return "utilities"
    if module.startswith("kseg.data"):
        return "data (calibration images)"
    if module.startswith("kseg.models"):
        return "the model's own layers (deserialising the checkpoint)"
    return "path"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["float32", "int8"])
    args = parser.parse_args()
    from kseg.cli import main as kseg

    work = tempfile.mkdtemp(prefix="kseg-export-path-")
    kseg(["data", "synth", os.path.join(work, "data"), "--num-images", "8", "--size", "32"])
    kseg(["train", "--data", os.path.join(work, "data"), "--model", "unet", "--model-arg", "filters=4",
          "--model-arg", "depth=2", "--steps", "8", "--val-every", "4", "--verbose", "0",
          "--out", os.path.join(work, "run")])
    seen = set()

    def importing(frame):
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if (frame.f_code.co_name == "<module>" and module != "__main__") or module.startswith("importlib"):
                return True
            frame = frame.f_back
        return False

    def record(frame, event, arg):  # functions that run, not module bodies run by an import
        if event == "call":
            name = frame.f_globals.get("__name__", "")
            if ((name == "kseg" or name.startswith("kseg.")) and name not in seen
                    and frame.f_code.co_name != "<module>" and not importing(frame.f_back)):
                seen.add(name)

    sys.setprofile(record)
    try:
        kseg(["export", os.path.join(work, "run", "best.keras"), "--out", os.path.join(work, "out"),
              "--modes", *args.modes, "--verbose", "0"])
    finally:
        sys.setprofile(None)
    path = sorted(name for name in seen if role(name) == "path")
    print(f"kseg export --modes {' '.join(args.modes)}: {len(path)} modules on the export path")
    for name in path:
        print(f"  {name}")
    for kind in ("utilities", "data (calibration images)", "the model's own layers (deserialising the checkpoint)"):
        print(f"{kind}: {', '.join(sorted(name for name in seen if role(name) == kind)) or 'none'}")


if __name__ == "__main__":
    main()
