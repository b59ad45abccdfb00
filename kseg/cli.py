"""The `kseg` command line: `kseg --help` lists every command; `kseg.commands` holds what they do."""

import argparse
import atexit
import contextlib
import os
import sys
import time

from kseg import commands, demo, settings
from kseg.deploy import modes
from kseg.errors import KsegError, first_line
from kseg.training.config import FORMAT_HELP, TrainConfig

STARTED = time.monotonic()  # what `kseg train --time-budget` counts from: before any framework is imported


def _modes_help():
    return "; ".join(f"{name}: {mode.summary}" for name, mode in modes.MODES.items())


def parser():
    p = argparse.ArgumentParser(prog="kseg", description="Keras 3 semantic segmentation to LiteRT.")
    p.add_argument("--debug", action="store_true", help="on an error, show the whole trace, not one line")
    subcommands = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    c = subcommands.add_parser("demo", help="train, evaluate, export, benchmark on the embedded data; write a report")
    c.add_argument("--out", default="kseg-demo", help="report folder (default: kseg-demo)")
    c.add_argument("--steps", type=int, help=f"training steps (default {demo.STEPS}, or {demo.TRAINING_BUDGET:g} s "
                                             f"from the start, whichever ends first; --quick: {demo.QUICK_STEPS})")
    c.add_argument("--quick", action="store_true", help="a one-minute run with a narrow model and tiny data")
    c.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    c.set_defaults(func=commands.cmd_demo)

    c = subcommands.add_parser("train", help="train a model with Keras fit (resumes in an existing --out)",
                            description="Settings left out are chosen from the data (printed at the start and "
                                        "stored in OUT/config.json; --config repeats a run).")
    settings.add_flags(c, TrainConfig)
    c.add_argument("--config", help="a run's config.json: repeat that run (flags given here override it)")
    c.set_defaults(func=commands.cmd_train)

    c = subcommands.add_parser("evaluate", help="score a .keras, .tflite or .onnx model: mIoU, per-class table, JSON")
    c.add_argument("model")
    c.add_argument("--data", default="synthetic")
    c.add_argument("--split", default="val")
    c.add_argument("--num-classes", type=int)
    c.add_argument("--threads", type=int, default=2, help="LiteRT / onnxruntime threads")
    c.add_argument("--json", help="write scores, per-class lists and the confusion matrix here")
    c.add_argument("--confusion", help="write a confusion-matrix picture (PNG) here")
    _inference_flags(c)
    c.set_defaults(func=commands.cmd_evaluate)

    c = subcommands.add_parser("predict", help="label PNGs (palette) and colour overlays for images, folders of "
                                            "them and videos")
    c.add_argument("model", help="a .keras, .tflite or .onnx file, a model folder or hf://org/name")
    c.add_argument("images", nargs="+", help="images, folders of images, or videos (.mp4, .mov, .avi, .mkv...)")
    c.add_argument("--out", required=True, help="output folder, or a video file (e.g. clip_seg.mp4) for one video")
    c.add_argument("--threads", type=int, default=2)
    _inference_flags(c)
    c.set_defaults(func=commands.cmd_predict)

    c = subcommands.add_parser("export", help="SavedModel, LiteRT (post-training, QAT and pruned modes) and ONNX")
    c.add_argument("model", help="a .keras file, a model folder (kseg.models.save_pretrained) or hf://org/name")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--modes", nargs="+", default=["float32", "int8"], choices=list(modes.MODES), help=_modes_help())
    c.add_argument("--input-size", type=settings.size,
                   help="input size of the exported model, e.g. 257x257 (default: the model's, or its training crop)")
    c.add_argument("--output", default="logits", choices=list(modes.OUTPUTS),
                   help="logits, or a uint8 label map (argmax inside the graph)")
    c.add_argument("--io-dtype", default="uint8", choices=list(modes.IO_DTYPES),
                   help="int8 files' input and output: uint8 (raw pixels, what MediaPipe reads; the shifts to int8 "
                        "go through float32, which LiteRT's CPU runs fast) or int8 (pixels - 128: every op integer, "
                        "for NPUs, the Edge TPU and microcontrollers)")
    c.add_argument("--calibration-data",
                   help="its train split calibrates int8 and fine-tunes QAT and pruning (default: the checkpoint's "
                        "training data, else synthetic)")
    c.add_argument("--num-classes", type=int)
    c.add_argument("--savedmodel", action="store_true", help="also write a SavedModel")
    settings.add_flags(c, modes.ExportSettings)
    c.set_defaults(func=commands.cmd_export)

    c = subcommands.add_parser("quantize-study", help="every quantization mode side by side: size, latency, mIoU")
    c.add_argument("model", help="a trained .keras file")
    c.add_argument("--data", default="synthetic", help="train split: calibration and fine-tuning; --split: scores")
    c.add_argument("--split", default="val")
    c.add_argument("--out", required=True, help="folder for the artifacts, study.md, study.json and study.png")
    c.add_argument("--modes", nargs="+", default=list(modes.LITERT), choices=list(modes.MODES),
                   help=f"default: every LiteRT mode (add onnx to compare onnxruntime). {_modes_help()}")
    c.add_argument("--input-size", type=settings.size,
                   help="input size of the exported models, e.g. 257x257 (default: the model's, or its training crop)")
    c.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    c.add_argument("--runs", type=int, default=20, help="timed runs per artifact and thread count")
    c.add_argument("--sensitivity", action="store_true", help="also rank layers by their int8 error")
    c.add_argument("--num-classes", type=int)
    settings.add_flags(c, modes.ExportSettings)
    c.set_defaults(func=commands.cmd_quantize_study)

    c = subcommands.add_parser("bench", help="latency (mean, p50, p90; invoke, copies, start-up, memory) and size of "
                                          ".tflite / .onnx / .keras files")
    c.add_argument("artifacts", nargs="+")
    c.add_argument("--threads", type=int, nargs="+", default=[2])
    c.add_argument("--runs", type=int, default=30)
    c.add_argument("--warmup", type=int, default=5)
    c.add_argument("--input-size", type=settings.size, help="for .keras models that take any size (default 257)")
    c.add_argument("--ops", action="store_true",
                   help="also time each op type with the runtime's profiler (.tflite: LiteRT's, .onnx: onnxruntime's)")
    c.add_argument("--top-ops", type=int, default=10, help="op types to print with --ops (all go to --json)")
    c.add_argument("--fresh-process", action="store_true",
                   help="measure each artifact in a new process, as an app starting with it (start-up and memory "
                        "then include the runtime's one-off costs; in one process later files show less)")
    c.add_argument("--json", help="write the numbers here")
    c.set_defaults(func=commands.cmd_bench)

    c = subcommands.add_parser("data", help="check a dataset folder, pack it as shards, or write the synthetic one")
    data = c.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    d = data.add_parser("check", help="counts, sizes, class histogram and every problem of a folder or annotated "
                                      "dataset (COCO, Cityscapes, ADE20K, VOC + SBD, labelme, CVAT, Label Studio)")
    d.add_argument("dir", help="a folder, or an annotation file (COCO or Label Studio JSON, CVAT XML)")
    d.add_argument("--num-classes", type=int)
    d.add_argument("--colors", help="JSON colour table for RGB masks")
    d.add_argument("--format", help=FORMAT_HELP.replace("--data (and --val-data)", "DIR"))
    d.set_defaults(func=commands.cmd_data_check)
    d = data.add_parser("pack", help="write a folder or annotated dataset as sharded TFRecord files (large data, "
                                     "many workers)")
    d.add_argument("dir")
    d.add_argument("--out", required=True, help="folder for the shards and their index.json")
    d.add_argument("--shards", type=int, default=8, help="files for the training split (default 8)")
    d.add_argument("--num-classes", type=int)
    d.add_argument("--colors", help="JSON colour table for RGB masks")
    d.add_argument("--format", help=FORMAT_HELP.replace("--data (and --val-data)", "DIR"))
    d.set_defaults(func=commands.cmd_data_pack)
    d = data.add_parser("synth", help="write the synthetic dataset as PNG folders")
    d.add_argument("out")
    d.add_argument("--num-images", type=int, default=64)
    d.add_argument("--size", type=settings.size, default=(128, 128), help="e.g. 128 or 96x128 (default 128)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=commands.cmd_data_synth)

    c = subcommands.add_parser("convert", help="another library's weights (torchvision, SMP, keras-hub) as a kseg "
                                               "model folder")
    c.add_argument("source", help="e.g. torchvision:lraspp_mobilenet_v3_large, torchvision:deeplabv3_resnet50, "
                                  "torchvision:resnet50, keras_hub:segformer (kseg.models.convert.names())")
    c.add_argument("--weights", required=True, help="its state dict: a torch.save file, .safetensors or .npz; for "
                                                    "keras_hub:* a local preset folder (save_to_preset's)")
    c.add_argument("--out", required=True, help="the model folder to write")
    c.add_argument("--class-names", nargs="+", metavar="NAME", help="one name per class, for the model card")
    c.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    c.add_argument("--model", help="an ImageNet classifier (torchvision:resnet50...): the architecture whose backbone "
                                   "it becomes, under a fresh head (deeplabv3 by default; fcn32s, lraspp)")
    c.add_argument("--num-classes", type=int, help="an ImageNet classifier: the fresh head's classes (default: one "
                                                   "per --class-names, else 21)")
    c.set_defaults(func=commands.cmd_convert)

    c = subcommands.add_parser("push", help="upload a model folder to the Hugging Face Hub (needs a token)")
    c.add_argument("folder", help="a model folder (kseg.models.save_pretrained)")
    c.add_argument("handle", help="hf://org/name, or hf://org/name@branch")
    c.add_argument("--private", action="store_true", help="create the repository private")
    c.set_defaults(func=commands.cmd_push)

    c = subcommands.add_parser("models", help="list the registered architectures and backbones")
    c.set_defaults(func=commands.cmd_models)
    return p


def _inference_flags(c):
    """How `kseg.Segmenter` runs a picture: --tile, --overlap, --tta (checked by it, in one line)."""
    c.add_argument("--tile", help="auto, N or HxW: overlapping windows blended (auto: windows of the training crop "
                                  "or input size when the picture is over 1.5x it)")
    c.add_argument("--overlap", default="0.25", help="share of a window its neighbours overlap (default 0.25)")
    c.add_argument("--tta", help="flip, scales=0.75,1,1.25 or flip,scales=...: probabilities averaged over views")


QUIET_IMPORTS = ("tensorflow",)  # frameworks whose C++ start-up logs are not the user's business


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ logs (CUDA probing on CPU machines)
    args = parser().parse_args(argv)
    if args.debug:
        os.environ["KSEG_DEBUG"] = "1"  # kseg.console then leaves framework logs on the console
    args.started = STARTED
    if not args.debug:
        _import_quietly(QUIET_IMPORTS)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("kseg: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = None if args.debug else user_error(error)
        if message is None:
            raise
        print(f"kseg: error: {message}", file=sys.stderr)
        return 2


def _import_quietly(modules):
    """Imports `modules` with the console quiet (TensorFlow 2.21 logs its CUDA probing through absl before
    TF_CPP_MIN_LOG_LEVEL applies). An import that fails is left to the command, which shows why."""
    import importlib

    from kseg import console

    with console.quiet():
        for name in modules:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)


def user_error(error):
    """One line for a mistake the user can fix (a KsegError: bad files, settings and builder arguments), or
    None for a fault to show with its trace."""
    return first_line(error, limit=1000) if isinstance(error, KsegError) else None


def run() -> None:
    """The `kseg` command: `main` with a fast exit.

    The interpreter's teardown of TensorFlow takes 1.5-3 s after the last line is printed (measured on 2 cores):
    seconds every command made its user wait for, and that `--time-budget` overran. Registered before any
    framework, the handler runs after every other exit handler (flushing logs, removing temporary files) and
    ends the process there; every file kseg writes is closed by then.
    """
    exit_code = [1]  # an uncaught exception's trace is printed before exit handlers run

    def exit_now():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code[0])

    atexit.register(exit_now)
    try:
        code = main()
    except SystemExit as stop:  # argparse's --help and usage errors
        code = stop.code
    exit_code[0] = code if isinstance(code, int) else int(code is not None)
    sys.exit(exit_code[0])


if __name__ == "__main__":
    run()
