"""Where the benchmarks' peer virtual environments and work folders live: one place, used by every benchmark.

The cache folder is `$KSEG_BENCH_CACHE`, else `~/.cache/kseg-bench`. `benchmarks/peers/make_venvs.py` creates
the venvs in `<cache>/venvs/<name>`; a benchmark takes each interpreter from its flag (`--smp-python`,
`--data-python`), else from `$KSEG_SMP_PYTHON` / `$KSEG_DATA_PYTHON`, else from that cache path. Work folders
(data and runs a benchmark reuses between runs) default to `<cache>/work/<benchmark>`.

Venvs (what each is for, and what make_venvs.py installs into it):
- smp: segmentation_models_pytorch on CPU PyTorch, the peer of `learning.py` (`peers/smp_unet.py`) and
  `edge_latency.py` (`peers/smp_latency.py`).
- data: the packages whose wheels ship the real sample images and masks that `real_data.py` writes out as kseg
  folders (for `learning.py` and `qat_recovery.py`).
"""

import os
import sys

CACHE_ENV = "KSEG_BENCH_CACHE"
NAMES = ("smp", "data")
MAKE = "python benchmarks/peers/make_venvs.py"


def cache_root(cache=None):
    """The benchmarks' cache folder: `cache`, else $KSEG_BENCH_CACHE, else ~/.cache/kseg-bench."""
    return os.path.abspath(os.path.expanduser(cache or os.environ.get(CACHE_ENV) or "~/.cache/kseg-bench"))


def venv_dir(name, cache=None):
    return os.path.join(cache_root(cache), "venvs", name)


def default_python(name, cache=None):
    """The interpreter make_venvs.py creates for venv `name`."""
    folder = venv_dir(name, cache)
    if os.name == "nt":
        return os.path.join(folder, "Scripts", "python.exe")
    return os.path.join(folder, "bin", "python")


def env_var(name):
    return f"KSEG_{name.upper()}_PYTHON"


def python(name, given=None):
    """The interpreter for venv `name`: `given` (a flag's value), else $KSEG_<NAME>_PYTHON, else the cache's."""
    return given or os.environ.get(env_var(name)) or default_python(name)


def missing(name, path):
    """One line saying that `path` (venv `name`'s interpreter) is missing and which command creates it."""
    return (f"{path} not found: create the {name} venv with `{MAKE} {name}` "
            f"(or pass --{name}-python / set {env_var(name)})")


def add_argument(parser, name, help_for):
    """Adds `--<name>-python` to `parser`, defaulting to $KSEG_<NAME>_PYTHON or the cache's interpreter."""
    parser.add_argument(f"--{name}-python", default=python(name),
                        help=f"interpreter of the {name} venv ({help_for}); default ${env_var(name)} or "
                             f"{default_python(name)} (created by `{MAKE} {name}`)")


def work_dir(benchmark, cache=None):
    """Default work folder of a benchmark: <cache>/work/<benchmark>."""
    return os.path.join(cache_root(cache), "work", benchmark)


if __name__ == "__main__":
    for venv in NAMES:
        print(venv, python(venv), file=sys.stdout)
