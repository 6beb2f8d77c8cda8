"""The nsfwjs nudity classifier (MIT licence), converted from its npm package to PyTorch.

``nsfwjs`` ships its default model, a Keras MobileNetV2 saved for TensorFlow.js, as two browserify
bundles under ``dist/models/mobilenet_v2``: ``model.min.js`` (layer list and weights manifest, a
JavaScript object literal) and ``group1-shard1of1.min.js`` (base64 uint8-quantised weights).
``convert`` reads them from the package (the ``.tgz`` of ``npm pack nsfwjs@4.3.0`` or an unpacked
folder), dequantises as TensorFlow.js does (``q * scale + min`` in float32), interprets the Keras
layer list generically (``build``) and writes ``model.safetensors`` and ``nsfwjs.json`` (source
package and sha256s, the layer list) into a folder: by default ``default_dir()``, which is
``$LATENTOPS_NSFWJS_DIR`` or else ``<sys.prefix>/share/latentops/nsfwjs`` (``make install`` and the
container images convert into it).

``detectors.load_nsfwjs`` loads a conversion once per process; ``detectors.NsfwjsDetector``
preprocesses as nsfwjs does and covers ``sexual`` (docs/screening.md).

``python -m latentops.governance.nsfwjs convert --package nsfwjs-4.3.0.tgz [--out DIR]``
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import re
import sys
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentops.core.errors import InvalidInput

PACKAGE = "nsfwjs"
MODEL_FOLDER = "dist/models/mobilenet_v2"
CLASSES = ("Drawing", "Hentai", "Neutral", "Porn", "Sexy")
IMAGE_SIZE = 224
# The ``sexual`` score: explicit classes count in full, suggestive ("Sexy") at half weight.
SEXUAL_WEIGHTS = {"Porn": 1.0, "Hentai": 1.0, "Sexy": 0.5}
ENV_DIR = "LATENTOPS_NSFWJS_DIR"
MANIFEST = "nsfwjs.json"
WEIGHTS = "model.safetensors"
FORMAT = 1


def default_dir() -> Path:
    """Where ``make install`` and the container images put the converted model."""
    override = os.environ.get(ENV_DIR, "").strip()
    return Path(override) if override else Path(sys.prefix) / "share" / "latentops" / "nsfwjs"


# --- reading the npm package --------------------------------------------------------------------


@dataclass
class PackageModel:
    name: str
    version: str
    package_sha256: str | None  # of the .tgz; None for an unpacked folder
    model_sha256: str  # of model.min.js and the weight bundles, in manifest order
    topology: dict[str, Any]
    weights: dict[str, np.ndarray]


def read_package(path: Path) -> PackageModel:
    """Read nsfwjs's MobileNetV2 from a ``.tgz`` or an unpacked package folder; errors name the file."""
    files = _package_files(path)
    try:
        meta = json.loads(files["package.json"])
    except (KeyError, json.JSONDecodeError):
        raise InvalidInput(f"package: {path} has no readable package.json: not an npm package") from None
    if meta.get("name") != PACKAGE:
        raise InvalidInput(f"package: {path} is the npm package {meta.get('name')!r}, not {PACKAGE}")
    model_file = f"{MODEL_FOLDER}/model.min.js"
    if model_file not in files:
        raise InvalidInput(f"package: {path} lacks {model_file}")
    model = _bundle_value(files[model_file], f"{path}: {model_file}")
    if not isinstance(model, dict) or "modelTopology" not in model or "weightsManifest" not in model:
        raise InvalidInput(f"package: {path}: {model_file} holds no modelTopology and weightsManifest")
    digest = hashlib.sha256(files[model_file])
    specs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    try:
        for group in model["weightsManifest"]:
            for shard in group["paths"]:
                shard_file = f"{MODEL_FOLDER}/{shard}.min.js"
                if shard_file not in files:
                    raise InvalidInput(f"package: {path} lacks the weight bundle {shard_file}")
                digest.update(files[shard_file])
                encoded = _bundle_value(files[shard_file], f"{path}: {shard_file}")
                try:
                    chunks.append(base64.b64decode(str(encoded), validate=True))
                except ValueError:
                    raise InvalidInput(f"package: {path}: {shard_file} is not base64 weight data") from None
            specs += group["weights"]
        weights = decode_weights(specs, b"".join(chunks), where=f"{path}: {MODEL_FOLDER}")
    except (KeyError, TypeError) as error:
        raise InvalidInput(f"package: {path}: {model_file} has a malformed weightsManifest ({error!r})") from None
    tgz_sha = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return PackageModel(PACKAGE, str(meta.get("version")), tgz_sha, digest.hexdigest(), model["modelTopology"], weights)


def _package_files(path: Path) -> dict[str, bytes]:
    wanted = re.compile(rf"^(package\.json|{re.escape(MODEL_FOLDER)}/[^/]+\.min\.js)$")
    if path.is_dir():
        root = path / "package" if (path / "package" / "package.json").exists() else path
        return {str(f.relative_to(root)): f.read_bytes() for f in [root / "package.json", *root.glob(f"{MODEL_FOLDER}/*.min.js")]
                if f.is_file()}
    if not path.is_file():
        raise InvalidInput(f"package: {path} does not exist (run `npm pack {PACKAGE}@4.3.0` to fetch it)")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                name = member.name.split("/", 1)[-1]
                if member.isfile() and wanted.match(name):
                    handle = archive.extractfile(member)
                    files[name] = handle.read() if handle else b""
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as error:
        raise InvalidInput(f"package: {path} is not a readable npm package archive ({error})") from None
    return files


_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_$][\w$]*")
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|\'[^\'\\]*(?:\\.[^\'\\]*)*\'')
_WORDS = (("!0", True), ("!1", False), ("true", True), ("false", False), ("null", None), ("void 0", None))


def _bundle_value(data: bytes, where: str) -> Any:
    """The literal a browserify bundle's module 1 assigns to ``module.exports``."""
    text = data.decode("utf-8", errors="replace")
    found = re.search(r"\{1:\[function\(\w+,(\w+),\w+\)\{\1\.exports=", text)
    if found is None:
        raise InvalidInput(f"package: {where} is not an nsfwjs model bundle (no module.exports literal)")
    try:
        return parse_literal(text, found.end())[0]
    except (ValueError, IndexError) as error:
        raise InvalidInput(f"package: {where} holds a damaged JavaScript literal ({error})") from None


def parse_literal(text: str, pos: int) -> tuple[Any, int]:
    """Parse the JavaScript literal at ``pos``: JSON plus bare keys, ``!0``/``!1``, ``.5``, single quotes."""
    pos = _skip(text, pos)
    char = text[pos]
    if char in "{[":
        closing = "}" if char == "{" else "]"
        items: list[Any] = []
        pos = _skip(text, pos + 1)
        while text[pos] != closing:
            if char == "{":
                bare = _IDENT.match(text, pos) or _NUMBER.match(text, pos)
                key, pos = _string(text, pos) if text[pos] in "\"'" else (bare.group(), bare.end()) if bare else _fail(text, pos)
                pos = _skip(text, pos)
                if text[pos] != ":":
                    _fail(text, pos)
                value, pos = parse_literal(text, pos + 1)
                items.append((key, value))
            else:
                value, pos = parse_literal(text, pos)
                items.append(value)
            pos = _skip(text, pos)
            if text[pos] == ",":
                pos = _skip(text, pos + 1)
            elif text[pos] != closing:
                _fail(text, pos)
        return (dict(items) if char == "{" else items), pos + 1
    if char in "\"'":
        return _string(text, pos)
    for word, constant in _WORDS:
        if text.startswith(word, pos):
            return constant, pos + len(word)
    number = _NUMBER.match(text, pos) or _fail(text, pos)
    token = number.group()
    return (float(token) if any(c in token for c in ".eE") else int(token)), number.end()


def _skip(text: str, pos: int) -> int:
    while text[pos] in " \t\r\n":
        pos += 1
    return pos


def _fail(text: str, pos: int) -> Any:
    raise ValueError(f"unexpected {text[pos:pos + 24]!r} at offset {pos}")


def _string(text: str, pos: int) -> tuple[str, int]:
    found = _STRING.match(text, pos) or _fail(text, pos)
    body = found.group()[1:-1]
    if found.group()[0] == "'":
        body = body.replace("\\'", "'").replace('"', '\\"')
    return json.loads(f'"{body}"'), found.end()


_DTYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}


def decode_weights(specs: Sequence[dict[str, Any]], data: bytes, *, where: str) -> dict[str, np.ndarray]:
    """TensorFlow.js's weight decoding: consecutive arrays, quantised ones as ``q * scale + min`` in float32."""
    weights: dict[str, np.ndarray] = {}
    offset = 0
    for spec in specs:
        shape = [int(d) for d in spec["shape"]]
        quant = spec.get("quantization")
        stored = np.dtype(_DTYPES[quant["dtype"] if quant else spec["dtype"]])
        size = int(np.prod(shape)) * stored.itemsize
        if offset + size > len(data):
            raise InvalidInput(f"package: {where}: weight data ends inside {spec['name']} (truncated bundle)")
        raw = np.frombuffer(data, dtype=stored, count=int(np.prod(shape)), offset=offset)
        offset += size
        if quant and quant["dtype"] != "float16":  # computed in float64, stored as float32, as JavaScript does
            raw = raw.astype(np.float64) * float(quant["scale"]) + float(quant["min"])
        weights[spec["name"]] = raw.astype(np.float32).reshape(shape)
    if offset != len(data):
        raise InvalidInput(f"package: {where}: {len(data) - offset} bytes of weight data are left over")
    return weights


# --- the Keras layer graph in PyTorch -------------------------------------------------------------

_KEPT = ("filters", "kernel_size", "strides", "padding", "dilation_rate", "use_bias", "activation", "depth_multiplier",
         "epsilon", "center", "scale", "max_value", "negative_slope", "threshold", "units", "pool_size", "axis")


def summarise(topology: dict[str, Any], weights: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The layer list that rebuilds the model: name, class, the configuration that matters, inputs, weight shapes."""
    config = topology["model_config"]["config"]
    layers = []
    for layer in config["layers"]:
        nodes = layer.get("inbound_nodes") or [[]]
        if len(nodes) > 1:
            raise InvalidInput(f"model: layer {layer['name']} is shared; shared layers are not supported")
        prefix = layer["name"] + "/"
        layers.append({"name": layer["name"], "class_name": layer["class_name"],
                       "config": {k: v for k, v in layer["config"].items() if k in _KEPT},
                       "inputs": [node[0] for node in nodes[0]],
                       "weights": {k[len(prefix):]: list(v.shape) for k, v in weights.items() if k.startswith(prefix)}})
    outputs = [o[0] for o in config["output_layers"]]
    if len(outputs) != 1 or layers[-1]["name"] != outputs[0]:
        raise InvalidInput(f"model: expected one output layer, listed last; found {outputs}")
    return layers


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding: the odd pixel goes after (bottom/right)."""
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


# Per layer class: its weights as (Keras name, buffer name, Keras -> PyTorch layout).
_LAYOUT: dict[str, tuple[tuple[str, str, Any], ...]] = {
    "Conv2D": (("kernel", "weight", lambda w: w.transpose(3, 2, 0, 1)), ("bias", "bias", None)),
    "DepthwiseConv2D": (("depthwise_kernel", "weight", lambda w: w.reshape(*w.shape[:2], -1).transpose(2, 0, 1)[:, None]),
                        ("bias", "bias", None)),
    "Dense": (("kernel", "weight", lambda w: w.T), ("bias", "bias", None)),
    "BatchNormalization": (("gamma", "gamma", None), ("beta", "beta", None), ("moving_mean", "mean", None),
                           ("moving_variance", "variance", None)),
}
_PLAIN = frozenset({"InputLayer", "ZeroPadding2D", "ReLU", "Activation", "Add", "Dropout", "Flatten", "AveragePooling2D",
                    "MaxPooling2D", "GlobalAveragePooling2D"})


def build(layers: list[dict[str, Any]], weights: dict[str, np.ndarray] | None = None) -> Any:
    """A ``torch.nn.Module`` running the Keras layer list on NCHW input (Keras weights by name, or zeros)."""
    import torch
    from torch.nn import functional as fn

    activations = {"linear": lambda x: x, None: lambda x: x, "relu": torch.relu, "relu6": lambda x: x.clamp(0, 6),
                   "softmax": lambda x: x.softmax(dim=1), "sigmoid": torch.sigmoid, "tanh": torch.tanh}

    class Layer(torch.nn.Module):
        def __init__(self, spec: dict[str, Any]) -> None:
            super().__init__()
            self.spec, self.kind, self.config = spec, spec["class_name"], spec["config"]
            if self.kind not in _LAYOUT and self.kind not in _PLAIN:
                raise InvalidInput(f"model: layer {spec['name']}: {self.kind} is not supported")
            if self.config.get("activation") not in activations:
                raise InvalidInput(f"model: layer {spec['name']}: activation {self.config['activation']!r} is not supported")
            if self.kind == "BatchNormalization" and self.config.get("axis", -1) not in (-1, 3, [-1], [3]):
                raise InvalidInput(f"model: layer {spec['name']} normalises axis {self.config['axis']}, not channels")
            shapes = spec.get("weights", {})
            for key, attr, arrange in _LAYOUT.get(self.kind, ()):
                if key not in shapes:
                    if self.kind == "BatchNormalization":  # without scale or center
                        size = shapes["moving_mean"][0]
                        self.register_buffer(attr, torch.ones(size) if key == "gamma" else torch.zeros(size), persistent=False)
                    continue
                array = np.zeros(shapes[key], np.float32) if weights is None else weights[f"{spec['name']}/{key}"]
                self.register_buffer(attr, torch.from_numpy(np.ascontiguousarray((arrange or (lambda w: w))(array))).float())
            self.groups = shapes["depthwise_kernel"][2] if self.kind == "DepthwiseConv2D" else 1

        def forward(self, *inputs: Any) -> Any:
            x, config, kind = inputs[0], self.config, self.kind
            tensors: dict[str, Any] = dict(self._buffers)
            activation = activations[config.get("activation")]
            if kind in ("Conv2D", "DepthwiseConv2D"):
                weight = tensors["weight"]
                (kh, kw), (sh, sw), (dh, dw) = weight.shape[-2:], _pair(config["strides"]), _pair(config["dilation_rate"])
                (top, bottom), (left, right) = ((_same_padding(x.shape[2], kh, sh, dh), _same_padding(x.shape[3], kw, sw, dw))
                                                if config["padding"] == "same" else ((0, 0), (0, 0)))
                if (top, left) != (bottom, right):  # uneven: pad first; even: let the convolution pad
                    x, top, left = fn.pad(x, (left, right, top, bottom)), 0, 0
                return activation(fn.conv2d(x, weight, tensors.get("bias"), (sh, sw), (top, left), (dh, dw), self.groups))
            if kind == "Dense":
                if x.dim() != 2:
                    raise InvalidInput(f"model: layer {self.spec['name']} gets a {x.dim()}-d input; only flat inputs work")
                return activation(fn.linear(x, tensors["weight"], tensors.get("bias")))
            if kind == "BatchNormalization":  # inference: the moving statistics
                return fn.batch_norm(x, tensors["mean"], tensors["variance"], tensors["gamma"], tensors["beta"], False, 0.0,
                                     float(config.get("epsilon", 1e-3)))
            if kind == "ZeroPadding2D":
                pad = config["padding"]
                (top, bottom), (left, right) = [_pair(p) for p in ([pad, pad] if isinstance(pad, int) else pad)]
                return fn.pad(x, (left, right, top, bottom))
            if kind == "ReLU":
                slope, threshold, limit = config.get("negative_slope", 0), config.get("threshold", 0), config.get("max_value")
                if slope or threshold:
                    x = torch.where(x >= threshold, x, slope * (x - threshold))
                    return x if limit is None else x.clamp(max=float(limit))
                return x.clamp(0, None if limit is None else float(limit))  # ReLU, ReLU6: one operation
            if kind == "Activation":
                return activation(x)
            if kind == "Add":
                return sum(inputs[1:], inputs[0])
            if kind in ("AveragePooling2D", "MaxPooling2D"):
                if config.get("padding", "valid") != "valid":
                    raise InvalidInput(f"model: layer {self.spec['name']}: only 'valid' pooling is supported")
                pool = fn.avg_pool2d if kind == "AveragePooling2D" else fn.max_pool2d
                return pool(x, _pair(config["pool_size"]), _pair(config.get("strides") or config["pool_size"]))
            if kind == "GlobalAveragePooling2D":
                return x.mean(dim=(2, 3))
            if kind == "Flatten":  # Keras flattens channels-last
                return (x.permute(0, 2, 3, 1) if x.dim() == 4 else x).flatten(1)
            return x  # InputLayer; Dropout at inference

    class KerasGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.order = [(spec["name"], spec["inputs"]) for spec in layers]
            self.blocks = torch.nn.ModuleDict({spec["name"]: Layer(spec) for spec in layers})

        def forward(self, x: Any) -> Any:
            values: dict[str, Any] = {}
            for name, sources in self.order:
                values[name] = self.blocks[name](*([values[s] for s in sources] or [x]))
            return values[self.order[-1][0]]

    return KerasGraph().eval()


def convert(package: Path, out: Path) -> dict[str, Any]:
    """Convert the package's MobileNetV2 into ``out`` (``model.safetensors`` + ``nsfwjs.json``)."""
    import torch
    from safetensors.torch import save

    source = read_package(package)
    try:
        layers = summarise(source.topology, source.weights)
        model = build(layers, source.weights)
        with torch.inference_mode():
            probe = model(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    except InvalidInput as error:
        raise InvalidInput(f"package: {package}: {error.detail}") from None
    except (KeyError, TypeError, IndexError, ValueError, RuntimeError) as error:
        raise InvalidInput(f"package: {package}: the model description is malformed ({type(error).__name__}: {error})") from None
    if tuple(probe.shape) != (1, len(CLASSES)):
        raise InvalidInput(f"package: {package}: the model answers shape {tuple(probe.shape)}, not (1, {len(CLASSES)})")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    data = save(state, metadata={"source": f"{source.name}@{source.version}"})
    _write(out / WEIGHTS, data)
    manifest = {
        "format": FORMAT, "classes": list(CLASSES), "image_size": IMAGE_SIZE,
        "source": {"package": source.name, "version": source.version, "file": package.name,
                   "sha256": source.package_sha256, "model_sha256": source.model_sha256, "model": MODEL_FOLDER,
                   "licence": "MIT"},
        "weights": WEIGHTS, "weights_sha256": hashlib.sha256(data).hexdigest(), "parameters": int(sum(v.numel() for v in state.values())),
        "layer_counts": {c: sum(1 for layer in layers if layer["class_name"] == c) for c in sorted({x["class_name"] for x in layers})},
        "converted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "layers": layers,
    }
    _write(out / MANIFEST, json.dumps(manifest, indent=1).encode())  # last: its presence means complete
    return manifest


def _write(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    partial.chmod(0o644)  # readable by the unprivileged user of the container images
    os.replace(partial, path)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The converted model's ``nsfwjs.json``, or None when ``folder`` holds no conversion."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidInput(f"nsfwjs: {path} is not readable JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "layers" not in manifest:
        raise InvalidInput(f"nsfwjs: {path} is not an nsfwjs conversion manifest (format {FORMAT})")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentops.governance.nsfwjs",
                                     description="Convert the nsfwjs npm package's MobileNetV2 model to PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert_cmd = commands.add_parser("convert", help="convert a packed (.tgz) or unpacked nsfwjs package",
                                      description="Write model.safetensors and nsfwjs.json into --out.")
    convert_cmd.add_argument("--package", type=Path, required=True, help="nsfwjs-4.3.0.tgz (npm pack) or its folder")
    convert_cmd.add_argument("--out", type=Path, default=None, help=f"target folder (default {default_dir()})")
    show_cmd = commands.add_parser("show", help="print the manifest of a converted model")
    show_cmd.add_argument("--dir", type=Path, default=None, help=f"converted folder (default {default_dir()})")
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            out = args.out or default_dir()
            manifest = convert(args.package, out)
            print(f"converted {manifest['source']['package']} {manifest['source']['version']} "
                  f"({manifest['parameters']} parameters) into {out}")
            return 0
        found = read_manifest(args.dir or default_dir())
        if found is None:
            raise InvalidInput(f"{args.dir or default_dir()} holds no converted nsfwjs model")
        print(json.dumps({k: v for k, v in found.items() if k != "layers"}, indent=2))
        return 0
    except InvalidInput as error:
        print(f"error: {error.detail}", file=sys.stderr)
        return 1
    except OSError as error:  # an --out that cannot be written
        print(f"error: {error.filename or args.command}: {error.strerror or error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
