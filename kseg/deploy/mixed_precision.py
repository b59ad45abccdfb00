"""The mixed mode's search: which ops of a full-int8 model to promote (to float, or int16 activations) so that
the mIoU drop from float32 stays within a bound, keeping the fewest; measured, not guessed.

Sensitivity is measured on AEQ's own int8 model (`sensitivity`): every tensor of the int8 model against the
float model on the same images, and for each op the error it adds, its output's relative error minus its
inputs'. TensorFlow's QuantizationDebugger (`kseg.deploy.study.layer_sensitivity`) feeds each op the dequantized int8
inputs, so it cannot see what quantizing an op's input loses (a tensor whose range one channel dominates);
this measure charges that loss to the op that consumes the tensor.

    search = Search(float_model, graph, images, masks, build=lambda promoted: ..., can_promote=lambda op: ...,
                    promote="float", num_classes=3)
    quantized, promoted = search.run(max_drop=0.3)
"""

import os
import tempfile

import numpy as np
from ai_edge_quantizer.utils import tfl_interpreter_utils

from kseg import metrics
from kseg.deploy import modes
from kseg.deploy.litert_graph import SIGNATURE, input_name, no_debug_warning, quantized_tensors
from kseg.errors import KsegError
from kseg.runtime import LiteRTModel, labels_from_logits

SENSITIVITY_IMAGES = 8  # images that rank ops (reference kernels, every tensor kept)
MAX_TRIALS = 40  # quantize-and-score trials the mixed search may spend


def tensor_errors(float_model, quantized_model, images):
    """{tensor name: relative RMS error of the quantized model's tensor against the float model's, averaged
    over `images`} for the tensors both models name (reference kernels, every tensor kept)."""
    totals, counts = {}, {}
    with no_debug_warning():
        interpreters = [tfl_interpreter_utils.create_tfl_interpreter(content, use_xnnpack=False,
                                                                     num_threads=os.cpu_count() or 1)
                        for content in (float_model, quantized_model)]
    name = input_name(float_model)
    for image in images:
        values = []
        for interpreter in interpreters:
            tfl_interpreter_utils.invoke_interpreter_signature(interpreter, {name: image}, SIGNATURE)
            values.append(tfl_interpreter_utils.get_tensor_name_to_content_map(interpreter, dequantize=True))
        reference, quantized = values
        for tensor, want in reference.items():
            got = quantized.get(tensor)
            if got is None or got.shape != want.shape or not np.issubdtype(want.dtype, np.floating):
                continue
            want = want.astype(np.float64)
            error = np.sqrt(np.mean((got.astype(np.float64) - want) ** 2)) / (np.sqrt(np.mean(want**2)) + 1e-12)
            totals[tensor] = totals.get(tensor, 0.0) + error
            counts[tensor] = counts.get(tensor, 0) + 1
    return {tensor: totals[tensor] / counts[tensor] for tensor in totals}


def sensitivity(graph, errors):
    """[(op, added error)] worst first: each op's output error minus its inputs' largest (what the op's
    quantization adds: its input's rounding, its weights', its output's), for ops with a measured output."""
    ranked = []
    for op in graph:
        if not op.outputs or op.outputs[0] not in errors:
            continue
        before = max((errors.get(name, 0.0) for name in op.inputs), default=0.0)
        ranked.append((op, errors[op.outputs[0]] - before))
    ranked.sort(key=lambda pair: -pair[1])
    return ranked


class Search:
    """The mixed search: which ops to promote so that the mIoU drop from float32 stays within a bound.

    `run(max_drop)`: scores full int8; if the drop is larger, ranks the quantized ops (`sensitivity`), finds
    the shortest prefix of the ranking that meets the bound (doubling, then bisection), then drops every
    promoted op the bound does not need (least sensitive first). When even every candidate misses the bound,
    the best set it tried (fewest ops on a tie). Every set it returns was quantized and scored; each trial is
    cached, at most MAX_TRIALS run.
    """

    def __init__(self, float_model, graph, images, masks, *, build, promote, can_promote, num_classes,
                 progress=False):
        """`build(promoted)`: the quantized model (bytes) with the ops `promoted`; `can_promote(op)`: whether an op
        may be promoted (its quantizer knows the op and can run it as `promote` asks, and no denylist has it in
        float already)."""
        if promote not in modes.PROMOTIONS:
            raise KsegError(f"promote must be one of {modes.PROMOTIONS}, got {promote!r}")
        self.float_model, self.graph, self.images, self.masks = float_model, graph, images, masks
        self.build, self.promote, self.can_promote = build, promote, can_promote
        self.num_classes, self.progress = num_classes, progress
        self.trials, self.tried, self.ranked = {}, {}, []  # op indices -> mIoU, -> the ops
        self.float_miou = self._miou(float_model)

    def quantized(self, promoted=()):
        return self.build(list(promoted))

    def trial(self, promoted, content=None):
        """The mIoU with the ops `promoted`, quantized and scored once (the files are not kept: large models)."""
        key = frozenset(op.index for op in promoted)
        if key not in self.trials:
            self.trials[key] = self._miou(content or self.quantized(promoted))
            self.tried[key] = list(promoted)
            if self.progress:
                print(f"    mixed: {len(promoted)} ops in {self.promote}: mIoU {100 * self.trials[key]:.2f} "
                      f"(float32 {100 * self.float_miou:.2f})", flush=True)
        return self.trials[key]

    def drop(self, promoted):
        return 100 * (self.float_miou - self.trial(promoted))

    def run(self, max_drop):
        """(quantized model bytes, promoted ops)."""
        int8 = self.quantized()
        if 100 * (self.float_miou - self.trial((), int8)) <= max_drop:
            return int8, []
        errors = tensor_errors(self.float_model, int8, self.images[:SENSITIVITY_IMAGES])
        quantized = quantized_tensors(int8)
        del int8
        self.ranked = [(op, score) for op, score in sensitivity(self.graph, errors)
                       if op.outputs[0] in quantized and self.can_promote(op)]
        candidates = [op for op, _ in self.ranked]

        def meets(count):
            return len(self.trials) < MAX_TRIALS and self.drop(candidates[:count]) <= max_drop

        low, high, count = 0, None, 1
        while count < len(candidates):
            if meets(count):
                high = count
                break
            low, count = count, count * 2
        if high is None:
            if not candidates or self.drop(candidates) > max_drop:  # nothing meets the bound: the best tried
                best = max(self.trials, key=lambda key: (self.trials[key], -len(key)))
                return self.quantized(self.tried[best]), self.tried[best]
            high = len(candidates)
        while high - low > 1:
            middle = (low + high) // 2
            if meets(middle):
                high = middle
            else:
                low = middle
        chosen = candidates[:high]
        for op in reversed(candidates[:high]):  # least sensitive first
            fewer = [other for other in chosen if other is not op]
            if len(self.trials) >= MAX_TRIALS:
                break
            if fewer and self.drop(fewer) <= max_drop:
                chosen = fewer
        return self.quantized(chosen), chosen  # AEQ is deterministic: the file that was scored

    def record(self, chosen, max_drop, model=None):
        """The sidecar's account of the search."""
        score = dict((op.index, value) for op, value in self.ranked)
        miou = self.trial(chosen)
        return {
            "promote": self.promote,
            "max_drop": max_drop,
            "promoted": [{**op.describe(model), "added_error": round(score.get(op.index, 0.0), 6)} for op in chosen],
            "selection": {
                "images": len(self.images),
                "float32_miou": self.float_miou,
                "int8_miou": self.trial(()),
                "miou": miou,
                "drop": 100 * (self.float_miou - miou),
                "met": 100 * (self.float_miou - miou) <= max_drop,
                "trials": len(self.trials),
            },
            "ranking": [{**op.describe(model), "added_error": round(value, 6)} for op, value in self.ranked[:15]],
        }

    def _miou(self, content):
        confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        with tempfile.TemporaryDirectory(prefix="kseg-mixed-") as folder:
            path = os.path.join(folder, "candidate.tflite")
            with open(path, "wb") as f:
                f.write(content)
            runner = LiteRTModel(path)
            for image, mask in zip(self.images, self.masks):
                output = runner.run(image[0])
                labels = output if runner.output_kind == "labels" else labels_from_logits(output)
                confusion += metrics.confusion_matrix(mask, labels, self.num_classes)
        return metrics.scores(confusion)["miou"]

