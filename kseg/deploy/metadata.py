"""TFLite Model Metadata in kseg's `.tflite` files, so that MediaPipe Tasks' ImageSegmenter runs them as they are.

    kseg.deploy.metadata.write("model_int8.tflite", ["background", "disc", "square"])  # kseg.deploy.litert does it
    kseg.deploy.metadata.read("model_int8.tflite")
    # {"name": "ImageSegmenter", "min_parser_version": "1.5.0", "color_space": "RGB",
    #  "normalization": {"mean": [0.0], "std": [1.0]}, "input_range": [0.0, 255.0],
    #  "labels": ["background", "disc", "square"], "activation": "SOFTMAX"}

It writes what MediaPipe's own metadata writer writes for a segmenter: a ModelMetadata flatbuffer
(identifier "M001") in a model buffer that a `TFLITE_METADATA` metadata entry names; an RGB input whose
normalisation is the identity (mean 0, std 1: kseg models take raw [0, 255] pixels; uint8 inputs ignore
it); a GRAYSCALE output whose class names are `labels.txt` (TENSOR_AXIS_LABELS), appended to the file as
an uncompressed zip; and the custom SEGMENTER_METADATA entry: SOFTMAX for C > 1 logits, SIGMOID for one.
MediaPipe's category mask is then kseg's labels, except for one-logit binary models, where MediaPipe
writes 0 for the foreground and 255 for the background. It refuses int8 (not uint8) inputs; label-map
outputs ([1, H, W], which it would read as W channels of one row) get no metadata: see `unsupported`.
The model is rewritten through the TFLite schema's object API (as MediaPipe's populator does), with
its weight buffers 16-byte aligned as the converter writes them: it runs as before.
"""

import io
import zipfile

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl
from flatbuffers.number_types import Float32Flags, Int8Flags, Int32Flags, Uint8Flags

from kseg import files
from kseg.errors import KsegError

METADATA_NAME = "TFLITE_METADATA"  # the model's metadata entry that points at the buffer
LABELS_FILE = "labels.txt"
ACTIVATIONS = ("NONE", "SIGMOID", "SOFTMAX")  # image_segmenter_metadata_schema.fbs, enum Activation
PARSER_VERSION = "1.5.0"  # the schema version that added SubGraphMetadata.custom_metadata

# The tables kseg writes, as declared in mediapipe/tasks/metadata/metadata_schema.fbs (schema 1.5.0,
# file identifier "M001") and image_segmenter_metadata_schema.fbs ("V001"): a field's vtable slot is its
# position. A union takes two slots, its type tag then its value (typed here by the member kseg writes).
SCHEMA = {table: [field.split(":") for field in fields.split()] for table, fields in {
    "ModelMetadata": "name:string description:string version:string subgraph_metadata:[SubGraphMetadata] "
                     "author:string license:string associated_files:[AssociatedFile] min_parser_version:string",
    "SubGraphMetadata": "name:string description:string input_tensor_metadata:[TensorMetadata] "
                        "output_tensor_metadata:[TensorMetadata] associated_files:[AssociatedFile] "
                        "input_process_units:[ProcessUnit] output_process_units:[ProcessUnit] "
                        "input_tensor_groups:[TensorGroup] output_tensor_groups:[TensorGroup] "
                        "custom_metadata:[CustomMetadata]",
    "TensorMetadata": "name:string description:string dimension_names:[string] content:Content "
                      "process_units:[ProcessUnit] stats:Stats associated_files:[AssociatedFile]",
    "Content": "content_properties_type:ubyte content_properties:ImageProperties range:ValueRange",
    "ImageProperties": "color_space:byte default_size:ImageSize",
    "ValueRange": "min:int max:int",
    "ProcessUnit": "options_type:ubyte options:NormalizationOptions",
    "NormalizationOptions": "mean:[float] std:[float]",
    "Stats": "max:[float] min:[float]",
    "AssociatedFile": "name:string description:string type:byte locale:string version:string",
    "CustomMetadata": "name:string data:[ubyte]",
    "ImageSegmenterOptions": "activation:byte min_parser_version:string",
}.items()}
IMAGE_PROPERTIES = 2  # union ContentProperties
NORMALIZATION_OPTIONS = 1  # union ProcessUnitOptions
COLOR_SPACES = ("UNKNOWN", "RGB", "GRAYSCALE")
TENSOR_AXIS_LABELS = 2  # enum AssociatedFileType
SCALARS = {"byte": Int8Flags, "ubyte": Uint8Flags, "int": Int32Flags}  # for reading


def unsupported(model_bytes):
    """Why the model cannot carry segmenter metadata (a sentence), or None when it can."""
    model = tfl.Model.GetRootAs(model_bytes, 0)
    if model.SubgraphsLength() != 1:
        return f"{model.SubgraphsLength()} subgraphs: MediaPipe takes one"
    graph = model.Subgraphs(0)
    if graph.InputsLength() != 1 or graph.OutputsLength() != 1:
        return f"{graph.InputsLength()} inputs and {graph.OutputsLength()} outputs: MediaPipe takes one of each"
    image, scores = graph.Tensors(graph.Inputs(0)), graph.Tensors(graph.Outputs(0))
    shape, signature = image.ShapeAsNumpy().tolist(), image.ShapeSignatureAsNumpy()
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or (not isinstance(signature, int) and -1 in signature):
        return f"input shape {shape} (signature {signature}): MediaPipe needs a fixed [1, H, W, 3] image"
    if image.Type() not in (tfl.TensorType.FLOAT32, tfl.TensorType.UINT8, tfl.TensorType.INT8):
        return "the input is neither float32, uint8 nor int8 pixels"
    if scores.ShapeLength() != 4:
        return (f"the output is a label map of shape {scores.ShapeAsNumpy().tolist()}, not [1, H, W, C] scores: "
                "MediaPipe would read its rows as channels (export logits for MediaPipe)")
    return None


def embed(model_bytes, class_names=None, activation=None, description=None):
    """The model with segmenter metadata (replacing any it had): bytes.

    `class_names`: one per output channel, or None for no labels file; `activation`: "SOFTMAX",
    "SIGMOID" or "NONE", by default SOFTMAX for several channels and SIGMOID for one.
    """
    reason = unsupported(model_bytes)
    if reason:
        raise KsegError(f"cannot add segmenter metadata: {reason}")
    graph = tfl.Model.GetRootAs(model_bytes, 0).Subgraphs(0)
    channels = int(graph.Tensors(graph.Outputs(0)).Shape(3))
    activation = activation or ("SOFTMAX" if channels > 1 else "SIGMOID")
    if activation not in ACTIVATIONS or (activation == "SOFTMAX" and channels == 1):
        raise KsegError(f"activation must be one of {ACTIVATIONS} (SOFTMAX needs several channels), got {activation!r}")
    names = [str(name) for name in class_names] if class_names else None
    if names and (len(names) != channels or any("\n" in name or "\r" in name for name in names)):
        raise KsegError(f"need {channels} class names of one line each for {channels} output channels, got {names}")
    meta = _metadata(ACTIVATIONS.index(activation), bool(names),
                     description or "Semantic segmentation by kseg: RGB pixels in [0, 255] in, class logits out.")
    out = io.BytesIO(_with_buffer(model_bytes, meta))
    if names:  # MediaPipe reads stored (uncompressed) entries only; a fixed date keeps the bytes reproducible
        with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(zipfile.ZipInfo(LABELS_FILE, date_time=(1980, 1, 1, 0, 0, 0)), "\n".join(names) + "\n")
    return out.getvalue()


def write(path, class_names=None, activation=None, description=None):
    """Adds segmenter metadata to the `.tflite` file at `path` (rewritten atomically); returns what `read` says."""
    with open(path, "rb") as f:
        data = embed(f.read(), class_names, activation, description)
    files.write_atomic(path, data)
    return read(data)


def read(model):
    """What the metadata of a `.tflite` file (a path or its bytes) says, as a dict; None when it has none.

    Keys: name, min_parser_version, color_space, normalization ({"mean", "std"} or None), input_range
    ([min, max] of the input values, or None), labels (list or None), activation (None when not stated).
    """
    if isinstance(model, str):
        with open(model, "rb") as f:
            model = f.read()
    found = tfl.Model.GetRootAs(model, 0)
    entries = [found.Metadata(i) for i in range(found.MetadataLength())]
    index = next((e.Buffer() for e in entries if e.Name().decode() == METADATA_NAME), None)
    if index is None:
        return None
    buffer = found.Buffers(index).DataAsNumpy().tobytes()
    if buffer[4:8] != b"M001":
        raise KsegError(f"the {METADATA_NAME} buffer is not TFLite metadata (identifier {buffer[4:8]!r})")
    root = _Table.root(buffer, "ModelMetadata")
    graph = root.get("subgraph_metadata")[0]
    image, scores = graph.get("input_tensor_metadata")[0], graph.get("output_tensor_metadata")[0]
    content, stats = image.get("content"), image.get("stats")
    norm = next((unit.get("options") for unit in image.get("process_units")
                 if unit.get("options_type") == NORMALIZATION_OPTIONS), None)
    options = next((c.get("data") for c in graph.get("custom_metadata") if c.get("name") == "SEGMENTER_METADATA"), None)
    label_file = next((f.get("name") for f in scores.get("associated_files") if f.get("type") == TENSOR_AXIS_LABELS),
                      None)
    labels = None
    if label_file:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            labels = archive.read(label_file).decode().splitlines()
    is_image = content is not None and content.get("content_properties_type") == IMAGE_PROPERTIES
    return {
        "name": root.get("name"),
        "min_parser_version": root.get("min_parser_version"),
        "color_space": COLOR_SPACES[content.get("content_properties").get("color_space")] if is_image else None,
        "normalization": {"mean": norm.get("mean"), "std": norm.get("std")} if norm else None,
        "input_range": [stats.get("min")[0], stats.get("max")[0]] if stats and stats.get("min") else None,
        "labels": labels,
        "activation": ACTIVATIONS[_Table.root(options, "ImageSegmenterOptions").get("activation")] if options else None,
    }


def _metadata(activation, with_labels, description):
    """The ModelMetadata flatbuffer (bytes). Arguments are evaluated first, so every string, vector and
    child table exists before the table holding it starts (flatbuffers cannot nest their building)."""
    b = flatbuffers.Builder(1024)
    text, floats = b.CreateString, (lambda values: b.CreateNumpyVector(np.asarray(values, np.float32)))
    image_content = _table(b, "Content", content_properties_type=IMAGE_PROPERTIES,
                           content_properties=_table(b, "ImageProperties", color_space=COLOR_SPACES.index("RGB")))
    identity = _table(b, "NormalizationOptions", mean=floats([0.0]), std=floats([1.0]))
    image = _table(b, "TensorMetadata", name=text("image"), description=text("RGB image, pixel values in [0, 255]."),
                   content=image_content, stats=_table(b, "Stats", max=floats([255.0]), min=floats([0.0])),
                   process_units=_vector(b, [_table(b, "ProcessUnit", options_type=NORMALIZATION_OPTIONS,
                                                    options=identity)]))
    labels = {}
    if with_labels:
        labels["associated_files"] = _vector(b, [_table(b, "AssociatedFile", name=text(LABELS_FILE),
                                                        description=text("Class names, one per output channel."),
                                                        type=TENSOR_AXIS_LABELS)])
    mask_content = _table(b, "Content", content_properties_type=IMAGE_PROPERTIES,
                          content_properties=_table(b, "ImageProperties", color_space=COLOR_SPACES.index("GRAYSCALE")),
                          range=_table(b, "ValueRange", min=1, max=2))  # dimensions 1 and 2 are the image's H, W
    scores = _table(b, "TensorMetadata", name=text("segmentation_masks"), content=mask_content,
                    description=text("Per-pixel class scores (logits)."), stats=_table(b, "Stats"), **labels)
    options = flatbuffers.Builder(64)
    options.Finish(_table(options, "ImageSegmenterOptions", activation=activation), file_identifier=b"V001")
    custom = _table(b, "CustomMetadata", name=text("SEGMENTER_METADATA"),
                    data=_bytes(b, bytes(options.Output()), alignment=16))  # data: [ubyte] (force_align: 16)
    graph = _table(b, "SubGraphMetadata", input_tensor_metadata=_vector(b, [image]),
                   output_tensor_metadata=_vector(b, [scores]), custom_metadata=_vector(b, [custom]))
    b.Finish(_table(b, "ModelMetadata", name=text("ImageSegmenter"), description=text(description),
                    subgraph_metadata=_vector(b, [graph]), min_parser_version=text(PARSER_VERSION)),
             file_identifier=b"M001")
    return bytes(b.Output())


def _table(builder, table, **values):
    """One table of SCHEMA from scalars and already-built children (offsets), by field name."""
    fields = SCHEMA[table]
    unknown = set(values) - {name for name, _ in fields}
    if unknown:
        raise KeyError(f"{table} has no field {unknown}")
    prepend = {"byte": builder.PrependInt8Slot, "ubyte": builder.PrependUint8Slot, "int": builder.PrependInt32Slot}
    builder.StartObject(len(fields))
    for slot, (name, kind) in enumerate(fields):
        if name in values:
            prepend.get(kind, builder.PrependUOffsetTRelativeSlot)(slot, values[name], 0)
    return builder.EndObject()


def _vector(builder, offsets):
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _bytes(builder, data, alignment):
    """A [ubyte] vector whose first byte is `alignment`-aligned in the finished buffer."""
    builder.StartVector(1, len(data), alignment)
    builder.head -= len(data)
    builder.Bytes[builder.head:builder.head + len(data)] = data
    return builder.EndVector()


class AlignedBuffer(tfl.BufferT):
    """A model buffer packed 16-byte aligned: TFLite's schema.fbs says `data:[ubyte] (force_align: 16)`,
    which the generated Python `Pack` ignores. `data`: bytes, or an array or list of uint8."""

    def Pack(self, builder):
        data = None
        if self.data is not None:
            raw = bytes(self.data) if isinstance(self.data, (bytes, bytearray, memoryview)) else (
                np.asarray(self.data, np.uint8).tobytes())
            data = _bytes(builder, raw, 16)
        tfl.BufferStart(builder)
        if data is not None:
            tfl.BufferAddData(builder, data)
        tfl.BufferAddOffset(builder, self.offset)
        tfl.BufferAddSize(builder, self.size)
        return tfl.BufferEnd(builder)


def is_constant(model, tensor):
    """Whether a tensor of `model` (a `tfl.ModelT`) has its data in the file: weights and other constants."""
    data = model.buffers[tensor.buffer].data if 0 < tensor.buffer < len(model.buffers) else None
    return data is not None and len(data) > 0


def _with_buffer(model_bytes, metadata):
    """The model flatbuffer (without anything appended to it) with `metadata` as its TFLITE_METADATA buffer."""
    model = tfl.ModelT.InitFromObj(tfl.Model.GetRootAs(model_bytes, 0))
    if any(buffer.offset > 1 for buffer in model.buffers or []):
        raise KsegError("models with external buffers (over 2 GB) cannot carry metadata here")
    model.buffers = [AlignedBuffer(data=b.data, offset=b.offset, size=b.size) for b in model.buffers or []]
    model.metadata = model.metadata or []
    entry = next((m for m in model.metadata if m.name in (METADATA_NAME, METADATA_NAME.encode())), None)
    if entry is None:  # else its buffer is replaced, as MediaPipe's populator does
        entry = tfl.MetadataT()
        entry.name, entry.buffer = METADATA_NAME, len(model.buffers)
        model.buffers.append(None)
        model.metadata.append(entry)
    model.buffers[entry.buffer] = AlignedBuffer(data=np.frombuffer(metadata, np.uint8))
    builder = flatbuffers.Builder(len(model_bytes) + len(metadata) + 65536)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class _Table:
    """Reads a SCHEMA table through flatbuffers' low-level Table: `get(field)` by name, typed by SCHEMA."""

    def __init__(self, buf, pos, table):
        self.tab, self.fields = flatbuffers.table.Table(buf, pos), dict(SCHEMA[table])
        self.slots = [name for name, _ in SCHEMA[table]]

    @classmethod
    def root(cls, buf, table):
        return cls(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0), table)

    def get(self, field):
        """The field's value (a str, int, list of floats, bytes, _Table or list of them); absent: its default."""
        kind, tab = self.fields[field], self.tab
        at = tab.Offset(4 + 2 * self.slots.index(field))  # 0 when the field is absent
        if kind in SCALARS:
            return tab.Get(SCALARS[kind], at + tab.Pos) if at else 0
        if not at:
            return [] if kind.startswith("[") else None
        if kind == "string":
            return tab.String(at + tab.Pos).decode()
        if kind in ("[float]", "[ubyte]"):
            values = tab.GetVectorAsNumpy(Float32Flags if kind == "[float]" else Uint8Flags, at)
            return values.tolist() if kind == "[float]" else values.tobytes()
        if kind.startswith("["):
            start = tab.Vector(at)
            return [_Table(tab.Bytes, tab.Indirect(start + 4 * i), kind[1:-1]) for i in range(tab.VectorLen(at))]
        return _Table(tab.Bytes, tab.Indirect(at + tab.Pos), kind)
