"""Per-op times of a `.tflite` file from LiteRT's own profiler (what `benchmark_model --enable_op_profiling` prints).

    rows = kseg.runtime.profiler.op_times("model_int8.tflite", num_threads=2, runs=20)
    # [{"op": "Delegate/Fully Connected (NC, QS8, QC8W) GEMM", "nodes": 43, "ms": 5.5, "share": 0.44}, ...]

ai_edge_litert's Python `Interpreter` has no profiler, and its `CompiledModel` wrapper cannot turn one on.
The LiteRT C library that the wheel ships (`libLiteRt.so`) can: a compiled model made with the runtime
option `enable_profiling = true` records an event per executed node, XNNPACK's operators included, and
`LiteRtGetProfileSummary` returns the summariser's text. This module drives that C API through ctypes
(create the environment, model, options and compiled model; run it on managed input and output
buffers between `LiteRtStartProfiler` and `LiteRtStopProfiler`) and parses the "Summary by node type"
table. Names are the runtime's: "Delegate/..." are XNNPACK operators (it runs 1x1 convolutions as
"Fully Connected" GEMMs, depthwise ones as "DWConv"), plain names (QUANTIZE) are ops XNNPACK left to
LiteRT's own kernels. The profiler's own bookkeeping makes the runs slower than unprofiled ones: trust
the shares, and `kseg.runtime.bench` for the latency.
"""

import ctypes
import os
import re

from kseg import console
from kseg.errors import KsegError

MIN_VERSION = (2, 3)  # the C API used here (LiteRtCreateModelFromFile taking the environment) was verified on 2.3.0
CPU = 1  # kLiteRtHwAcceleratorCpu
LOCK_WRITE = 1  # kLiteRtTensorBufferLockModeWrite
RANKED_TYPE_BYTES = 128  # LiteRtRankedTensorType is 72 bytes (element type + LiteRtLayout): room to spare
RUNTIME_OPTIONS = b"runtime_options_string"  # the identifier of LiteRT's runtime options (a TOML payload)
CPU_OPTIONS = b"xnnpack"  # the identifier of its CPU (XNNPACK) options


def library():
    """The LiteRT C library shipped in the ai_edge_litert wheel, loaded once."""
    global _LIBRARY, _LIBC
    if _LIBRARY is None:
        from importlib.metadata import version

        import ai_edge_litert

        found = version("ai-edge-litert")
        if tuple(int(part) for part in re.findall(r"\d+", found)[:2]) < MIN_VERSION:
            raise KsegError(f"per-op profiling needs ai-edge-litert >= {'.'.join(map(str, MIN_VERSION))}, "
                            f"found {found}")
        path = os.path.join(os.path.dirname(ai_edge_litert.__file__), "libLiteRt.so")
        if not os.path.exists(path):
            raise KsegError(f"no LiteRT C library at {path}: per-op profiling needs ai_edge_litert's libLiteRt.so")
        lib = ctypes.CDLL(path)
        if not hasattr(lib, "LiteRtGetProfileSummary"):
            raise KsegError(f"{path} has no profiler (LiteRtGetProfileSummary): ai_edge_litert is too old")
        lib.LiteRtGetProfileSummary.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p)]
        lib.LiteRtCreateOpaqueOptions.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                                                  ctypes.POINTER(ctypes.c_void_p)]
        lib.LiteRtCreateModelFromFile.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.LiteRtRunCompiledModel.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                                               ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        lib.LiteRtLockTensorBuffer.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
        for name in ("LiteRtDestroyTensorBuffer", "LiteRtDestroyCompiledModel", "LiteRtDestroyModel",
                     "LiteRtDestroyOptions", "LiteRtDestroyEnvironment"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = None
        libc = ctypes.CDLL(None)  # malloc and free, for what LiteRT owns or hands over
        libc.malloc.argtypes, libc.malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
        libc.free.argtypes, libc.free.restype = [ctypes.c_void_p], None
        _LIBRARY, _LIBC = lib, libc
    return _LIBRARY


_LIBRARY = _LIBC = None


def _check(status, what):
    if status != 0:
        raise KsegError(f"LiteRT profiler: {what} failed (LiteRtStatus {status})")


def _handle():
    return ctypes.c_void_p()


class ProfiledModel:
    """A `.tflite` file compiled by LiteRT (CPU, XNNPACK) with its profiler on; `summary(runs)` profiles it.

    Inputs are random bytes: timing does not depend on pixel values.
    """

    def __init__(self, path, num_threads=None):
        if not os.path.exists(path):
            raise KsegError(f"{path}: no such file")
        self.lib, self.path = library(), path
        self.env, self.model, self.options, self.compiled = _handle(), _handle(), _handle(), _handle()
        self.inputs, self.outputs = [], []
        with console.quiet():  # LiteRT logs each accelerator it looks for at INFO level, with no Python switch
            self._create(path, num_threads)

    def _create(self, path, num_threads):
        lib = self.lib
        try:
            _check(lib.LiteRtCreateEnvironment(0, None, ctypes.byref(self.env)), "creating the environment")
            _check(lib.LiteRtCreateModelFromFile(self.env, os.fsencode(path), ctypes.byref(self.model)),
                   f"loading {path}")
            _check(lib.LiteRtCreateOptions(ctypes.byref(self.options)), "creating options")
            _check(lib.LiteRtSetOptionsHardwareAccelerators(self.options, CPU), "choosing the CPU")
            self._add_options(RUNTIME_OPTIONS, "enable_profiling = true")
            if num_threads:
                self._add_options(CPU_OPTIONS, f"num_threads = {int(num_threads)}")
            _check(lib.LiteRtCreateCompiledModel(self.env, self.model, self.options, ctypes.byref(self.compiled)),
                   f"compiling {path}")
            self.profiler = _handle()
            _check(lib.LiteRtCompiledModelGetProfiler(self.compiled, ctypes.byref(self.profiler)),
                   "getting the profiler")
            self.inputs = self._buffers("Input")
            self.outputs = self._buffers("Output")
        except Exception:
            self.close()
            raise

    def _add_options(self, identifier, toml):
        """Opaque options: a TOML payload that the options own (malloc'd here, released by LiteRT with free)."""
        data = toml.encode() + b"\0"
        payload = _LIBC.malloc(len(data))
        ctypes.memmove(payload, data, len(data))
        opaque = _handle()
        _check(self.lib.LiteRtCreateOpaqueOptions(identifier, payload, ctypes.cast(_LIBC.free, ctypes.c_void_p),
                                                  ctypes.byref(opaque)), f"creating {identifier.decode()} options")
        _check(self.lib.LiteRtAddOpaqueOptions(self.options, opaque), f"adding {identifier.decode()} options")

    def _buffers(self, kind):
        """Managed buffers for the inputs ("Input") or outputs ("Output") of signature 0, inputs filled with noise."""
        lib = self.lib
        signature, count = _handle(), ctypes.c_size_t()
        _check(lib.LiteRtGetModelSignature(self.model, ctypes.c_size_t(0), ctypes.byref(signature)),
               "reading the signature")
        _check(getattr(lib, f"LiteRtGetNumSignature{kind}s")(signature, ctypes.byref(count)), f"counting {kind}s")
        buffers = []
        for index in range(count.value):
            tensor, requirements, buffer = _handle(), _handle(), _handle()
            ranked = ctypes.create_string_buffer(RANKED_TYPE_BYTES)
            _check(getattr(lib, f"LiteRtGetSignature{kind}TensorByIndex")(signature, ctypes.c_size_t(index),
                                                                          ctypes.byref(tensor)), f"{kind} {index}")
            _check(lib.LiteRtGetRankedTensorType(tensor, ranked), f"the type of {kind} {index}")
            _check(getattr(lib, f"LiteRtGetCompiledModel{kind}BufferRequirements")(
                self.compiled, ctypes.c_size_t(0), ctypes.c_size_t(index), ctypes.byref(requirements)),
                f"the buffer requirements of {kind} {index}")
            _check(lib.LiteRtCreateManagedTensorBufferFromRequirements(self.env, ranked, requirements,
                                                                       ctypes.byref(buffer)),
                   f"a buffer for {kind} {index}")
            buffers.append(buffer)
            if kind == "Input":
                self._fill(buffer)
        return buffers

    def _fill(self, buffer):
        size, address = ctypes.c_size_t(), _handle()
        _check(self.lib.LiteRtGetTensorBufferSize(buffer, ctypes.byref(size)), "reading a buffer size")
        _check(self.lib.LiteRtLockTensorBuffer(buffer, ctypes.byref(address), LOCK_WRITE), "locking a buffer")
        noise = os.urandom(size.value)
        ctypes.memmove(address, noise, size.value)
        _check(self.lib.LiteRtUnlockTensorBuffer(buffer), "unlocking a buffer")

    def run(self):
        inputs = (ctypes.c_void_p * len(self.inputs))(*[b.value for b in self.inputs])
        outputs = (ctypes.c_void_p * len(self.outputs))(*[b.value for b in self.outputs])
        _check(self.lib.LiteRtRunCompiledModel(self.compiled, 0, len(self.inputs), inputs, len(self.outputs),
                                               outputs), "running the model")

    def summary(self, runs=20, warmup=2):
        """The profiler's summary text of `runs` runs (after `warmup` unprofiled ones)."""
        lib = self.lib
        for _ in range(warmup):
            self.run()
        _check(lib.LiteRtResetProfiler(self.profiler), "resetting the profiler")
        _check(lib.LiteRtStartProfiler(self.profiler), "starting the profiler")
        for _ in range(runs):
            self.run()
        _check(lib.LiteRtStopProfiler(self.profiler), "stopping the profiler")
        text = ctypes.c_char_p()
        _check(lib.LiteRtGetProfileSummary(self.profiler, self.compiled, ctypes.byref(text)), "summarising")
        try:
            return text.value.decode(errors="replace")
        finally:
            _LIBC.free(ctypes.cast(text, ctypes.c_void_p))

    def close(self):
        with console.quiet():
            self._destroy()

    def _destroy(self):
        lib = self.lib
        for buffer in self.inputs + self.outputs:
            lib.LiteRtDestroyTensorBuffer(buffer)
        self.inputs, self.outputs = [], []
        for handle, destroy in ((self.compiled, "LiteRtDestroyCompiledModel"), (self.model, "LiteRtDestroyModel"),
                                (self.options, "LiteRtDestroyOptions"), (self.env, "LiteRtDestroyEnvironment")):
            if handle.value:
                getattr(lib, destroy)(handle)
                handle.value = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def parse_summary(text, runs):
    """The "Summary by node type" table as [{"op", "nodes", "ms" (per run), "share"}], slowest first."""
    section = text.split("Summary by node type", 1)
    if len(section) < 2:
        raise KsegError("LiteRT profiler: the summary has no 'Summary by node type' table")
    rows = []
    # [Node type] [count] [avg ms] [avg %] [cdf %] [mem KB] [times called]; the type may contain spaces
    line = re.compile(r"^\s*(.+?)\s+(\d+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)%\s+([\d.]+)\s+(\d+)\s*$")
    for text_line in section[1].splitlines()[1:]:
        if not text_line.strip():
            if rows:
                break
            continue
        match = line.match(text_line)
        if not match:
            continue
        name, nodes, avg_ms, share, _, _, calls = match.groups()
        rows.append({"op": name, "nodes": int(nodes), "ms": float(avg_ms) * int(calls) / runs,
                     "share": float(share) / 100})
    return sorted(rows, key=lambda row: -row["ms"])


def op_times(path, num_threads=None, runs=20, warmup=2):
    """Per op type: nodes, milliseconds per run and share of the profiled time, slowest first."""
    with ProfiledModel(path, num_threads) as model:
        return parse_summary(model.summary(runs, warmup), runs)


SLOWER = 1.1  # a quantized file this many times its float32 file's latency, or more, gets a note at export


def reference_kernel_ops(path, num_threads=None, runs=5, min_share=0.1):
    """[(op, share of the call)] of the ops that LiteRT's own kernels ran (not XNNPACK) taking at least `min_share`
    of a call each: what makes a quantized file slower than its float32 twin on a CPU (int16x8 convolutions,
    int8 BATCH_MATMUL). Empty where the profiler cannot run here."""
    try:
        rows = op_times(path, num_threads=num_threads, runs=runs, warmup=1)
    except (KsegError, OSError, AttributeError):
        return []
    return [(row["op"], row["share"]) for row in rows if not row["op"].startswith("Delegate/")
            and row["share"] >= min_share]


def slower_than_float32(results) -> list[str]:
    """A line for each LiteRT file of one export (objects with `mode`, `path` and `latency`: str(threads) ->
    `kseg.runtime.bench` statistics, as `kseg.deploy.stage.StageResult`) that ran over `SLOWER` x its float32
    file's time, naming the ops LiteRT's reference kernels ran for it (`reference_kernel_ops`)."""
    float32 = next((result for result in results if result.mode == "float32" and result.latency), None)
    if float32 is None:
        return []
    notes = []
    for result in results:
        shared = [threads for threads in result.latency if threads in float32.latency]
        if result.mode == "float32" or not shared or not result.path.endswith(".tflite"):
            continue
        threads = max(shared, key=int)
        ratio = result.latency[threads]["mean_ms"] / float32.latency[threads]["mean_ms"]
        if ratio <= SLOWER:
            continue
        slow = reference_kernel_ops(result.path, num_threads=int(threads))
        note = f"{result.mode} ran {ratio:.1f}x slower than float32 at {threads} threads"
        if slow:
            note += "; LiteRT's reference kernels (not XNNPACK) ran " + ", ".join(
                f"{op} ({100 * share:.0f}% of the call)" for op, share in slow)
        if slow and result.mode in ("int8", "qat_int8"):  # int8 with those ops in float is the mixed mode
            names = " ".join(sorted({op for op, _ in slow}))
            note += f": `--modes mixed --float-ops {names}` keeps them in float"
        notes.append(note)
    return notes
