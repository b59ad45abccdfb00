"""segmentation_models_pytorch's DeepLabV3+ MobileNetV2 in eager PyTorch: single-image latency on the CPU.

    python benchmarks/peers/make_venvs.py smp         # once; prints SMP_PYTHON, the venv's interpreter
    SMP_PYTHON benchmarks/peers/smp_latency.py --size 512 --threads 2 --runs 20

What a PyTorch user deploying SMP would time: `smp.DeepLabV3Plus(encoder_name="mobilenet_v2",
encoder_weights=None, encoder_output_stride=16, classes=21)` in eval mode under `torch.inference_mode()`,
`torch.set_num_threads(threads)`, one (1, 3, size, size) float32 image, logits out; then the same with the
argmax over classes (a label map, what an app draws). Prints one JSON line: mean, p50 and min of `runs`
calls after `warmup` calls, for logits and ("labels_*") for labels. The venv is the one `benchmarks/peers/smp_unet.py`
describes (same torchvision workaround: smp_import.py).
"""

import argparse
import json
import time

import numpy as np
import torch
from smp_import import smp  # noqa: E402  (segmentation_models_pytorch, with the torchvision workaround)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--classes", type=int, default=21)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = smp.DeepLabV3Plus(encoder_name="mobilenet_v2", encoder_weights=None, encoder_output_stride=16,
                              classes=args.classes).eval()
    image = torch.rand(1, 3, args.size, args.size)

    def timed(call):
        times = []
        with torch.inference_mode():
            for index in range(args.warmup + args.runs):
                start = time.perf_counter()
                out = call()
                if index >= args.warmup:
                    times.append((time.perf_counter() - start) * 1000)
        return out, np.asarray(times)

    logits, times = timed(lambda: model(image))
    assert tuple(logits.shape) == (1, args.classes, args.size, args.size), logits.shape
    labels, label_times = timed(lambda: model(image).argmax(1))
    assert tuple(labels.shape) == (1, args.size, args.size), labels.shape
    print(json.dumps({"mean_ms": float(times.mean()), "p50_ms": float(np.median(times)), "min_ms": float(times.min()),
                      "labels_mean_ms": float(label_times.mean()), "labels_p50_ms": float(np.median(label_times)),
                      "runs": args.runs, "threads": args.threads, "size": args.size,
                      "params": sum(p.numel() for p in model.parameters()),
                      "versions": {"torch": torch.__version__, "segmentation_models_pytorch": smp.__version__}}))


if __name__ == "__main__":
    main()
