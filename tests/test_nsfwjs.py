"""nsfwjs converted from its npm package: the PyTorch model reproduces the package's own outputs
(fixtures/nsfwjs/reference.json, written by reference.mjs with TensorFlow.js), bad packages are
refused naming the file, and the detector scores ``sexual`` as documented."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from latentops.core.errors import InvalidInput
from latentops.governance import detectors, nsfwjs

# What `make install` leaves: the packed npm package beside its conversion.
INSTALLED_TGZ = Path(sys.prefix) / "share" / "latentops" / "nsfwjs-4.3.0.tgz"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nsfwjs"
# Largest difference allowed between a class probability of the converted model and nsfwjs's own
# (TensorFlow.js, CPU backend); measured: at most 1.1e-6 over the nine inputs.
TOLERANCE = 1e-4


def converted_nsfwjs(factory: pytest.TempPathFactory) -> Path:
    """A conversion made here from the package `make install` keeps, else the installed conversion."""
    if INSTALLED_TGZ.is_file():
        out = factory.mktemp("nsfwjs")
        nsfwjs.convert(INSTALLED_TGZ, out)
        return out
    if nsfwjs.read_manifest(nsfwjs.default_dir()) is not None:
        return nsfwjs.default_dir()
    pytest.fail(f"neither the package {INSTALLED_TGZ} nor a conversion in {nsfwjs.default_dir()} exists: "
                "`make install` packs nsfwjs@4.3.0 with npm and converts it")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted_nsfwjs(tmp_path_factory)


def decode_input(entry: dict[str, Any]) -> np.ndarray:
    """An inputs.json entry as the float32 H x W x 3 array (0-255 scale) it stands for."""
    dtype = np.dtype("<u2") if entry["dtype"] == "uint16" else np.dtype(np.uint8)
    codes = np.frombuffer(zlib.decompress(base64.b64decode(entry["data"])), dtype=dtype).astype(np.float32)
    return (codes / np.float32(entry["divisor"])).reshape([int(d) for d in entry["shape"]])


def test_converted_model_reproduces_the_nsfwjs_package_outputs(converted: Path) -> None:
    inputs_text = (FIXTURES / "inputs.json").read_bytes()
    reference = json.loads((FIXTURES / "reference.json").read_text())
    assert reference["inputs_sha256"] == hashlib.sha256(inputs_text).hexdigest(), "inputs.json changed: run reference.mjs"
    model = detectors.load_nsfwjs(converted)
    assert reference["nsfwjs"] == model.manifest["source"]["version"] == "4.3.0"
    differences = {}
    for entry in json.loads(inputs_text)["inputs"]:
        expected = reference["probabilities"][entry["name"]]
        # nsfwjs's raw output order is the class order the conversion assumes.
        assert reference["raw_output"][entry["name"]] == [expected[c] for c in nsfwjs.CLASSES]
        got = model.probabilities([decode_input(entry)])[0]
        differences[entry["name"]] = float(np.abs(got - np.array([expected[c] for c in nsfwjs.CLASSES])).max())
    assert len(differences) == 9 and max(differences.values()) <= TOLERANCE, differences


def test_pil_images_and_arrays_are_preprocessed_alike(converted: Path) -> None:
    model = detectors.load_nsfwjs(converted)
    pixels = np.random.default_rng(5).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    from_image, from_array = model.probabilities([Image.fromarray(pixels), pixels.astype(np.float32)])
    assert np.array_equal(from_image, from_array)
    # Alpha is dropped, as tf.browser.fromPixels does.
    rgba = Image.fromarray(pixels).convert("RGBA")
    assert np.array_equal(model.probabilities([rgba]), model.probabilities([Image.fromarray(pixels)]))


def test_conversion_records_its_source(converted: Path) -> None:
    manifest = nsfwjs.read_manifest(converted)
    assert manifest is not None
    assert manifest["source"]["package"] == "nsfwjs" and manifest["source"]["licence"] == "MIT"
    assert manifest["classes"] == list(nsfwjs.CLASSES) and manifest["image_size"] == 224
    assert manifest["parameters"] == 2_619_461
    assert manifest["layer_counts"]["DepthwiseConv2D"] == 17 and manifest["layer_counts"]["Add"] == 10
    assert manifest["weights_sha256"] == hashlib.sha256((converted / nsfwjs.WEIGHTS).read_bytes()).hexdigest()
    if INSTALLED_TGZ.is_file():
        assert manifest["source"]["sha256"] == hashlib.sha256(INSTALLED_TGZ.read_bytes()).hexdigest()
        installed = nsfwjs.read_manifest(nsfwjs.default_dir())
        if installed is not None:  # the same package converts to the same bytes
            assert installed["weights_sha256"] == manifest["weights_sha256"]


def test_detector_scores_sexual_from_the_class_probabilities(converted: Path) -> None:
    detector = detectors.NsfwjsDetector(converted)
    images = [Image.new("RGB", (224, 224)), Image.new("RGB", (300, 200), (220, 170, 140))]
    probabilities = detector.model.probabilities(images)
    column = {c: i for i, c in enumerate(nsfwjs.CLASSES)}
    expected = [round(float(p[column["Porn"]] + p[column["Hentai"]] + 0.5 * p[column["Sexy"]]), 6) for p in probabilities]
    assert detector.score(images) == [{"sexual": e} for e in expected]
    assert detector.name == "nsfwjs" and detector.categories == ("sexual",) and detector.score([]) == []
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_tampered_weights_are_refused(converted: Path, tmp_path: Path) -> None:
    copy = tmp_path / "nsfwjs"
    shutil.copytree(converted, copy)
    data = bytearray((copy / nsfwjs.WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (copy / nsfwjs.WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match="does not match the sha256"):
        detectors.load_nsfwjs(copy)
    with pytest.raises(InvalidInput, match=f"{tmp_path / 'empty'} holds no converted model"):
        detectors.load_nsfwjs(tmp_path / "empty")


# --- bad packages ------------------------------------------------------------------------------------

def bundle(body: str) -> str:
    """A browserify bundle whose module 1 exports ``body``, as nsfwjs's model files are."""
    return "!function(e){}({1:[function(e,a,n){a.exports=" + body + "},{}]},{},[1])(1)});"


TOPOLOGY = ('{model_config:{class_name:"Model",config:{name:"m",layers:['
            '{name:"input_1",class_name:"InputLayer",config:{batch_input_shape:[null,224,224,3]},inbound_nodes:[]},'
            '{name:"pool",class_name:"GlobalAveragePooling2D",config:{},inbound_nodes:[[["input_1",0,0,{}]]]},'
            '{name:"dense",class_name:"Dense",config:{units:5,activation:"softmax",use_bias:!0},'
            'inbound_nodes:[[["pool",0,0,{}]]]}],input_layers:[["input_1",0,0]],output_layers:[["dense",0,0]]}}}')
MANIFEST = ('[{paths:["group1-shard1of1"],weights:[{name:"dense/kernel",shape:[3,5],dtype:"float32"},'
            '{name:"dense/bias",shape:[5],dtype:"float32"}]}]')


def make_package(folder: Path, *, name: str = "nsfwjs", model: str | None = None, weights: bytes | None = None) -> Path:
    """A small npm package archive shaped like nsfwjs's (a softmax over the mean colour)."""
    files = {"package.json": json.dumps({"name": name, "version": "0.0.1"}).encode(),
             f"{nsfwjs.MODEL_FOLDER}/model.min.js": (model or bundle(
                 f"{{modelTopology:{TOPOLOGY},weightsManifest:{MANIFEST}}}")).encode()}
    if weights is not None:
        files[f"{nsfwjs.MODEL_FOLDER}/group1-shard1of1.min.js"] = bundle(json.dumps(base64.b64encode(weights).decode())).encode()
    path = folder / f"{name}.tgz"
    with tarfile.open(path, "w:gz") as archive:
        for member, data in files.items():
            info = tarfile.TarInfo(f"package/{member}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_a_package_with_float_weights_converts_and_computes_its_layers(tmp_path: Path) -> None:
    kernel, bias = np.arange(15, dtype=np.float32).reshape(3, 5) / 10, np.array([0.1, -0.2, 0.3, 0.0, 0.5], np.float32)
    manifest = nsfwjs.convert(make_package(tmp_path, weights=kernel.tobytes() + bias.tobytes()), tmp_path / "out")
    assert manifest["parameters"] == 20 and manifest["source"]["version"] == "0.0.1"
    pixels = np.random.default_rng(1).integers(0, 256, (224, 224, 3)).astype(np.float32)
    logits = (pixels / 255).mean(axis=(0, 1)) @ kernel + bias
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    got = detectors.load_nsfwjs(tmp_path / "out").probabilities([pixels])[0]
    assert np.abs(got - expected).max() < 1e-6


@pytest.mark.parametrize(("case", "message"), [
    ("missing", "does not exist"),
    ("not_an_archive", "is not a readable npm package archive"),
    ("truncated", "is not a readable npm package archive"),
    ("other_package", "is the npm package 'left-pad', not nsfwjs"),
    ("damaged_topology", "model.min.js holds a damaged JavaScript literal"),
    ("no_weight_bundle", "lacks the weight bundle dist/models/mobilenet_v2/group1-shard1of1.min.js"),
    ("short_weights", "weight data ends inside dense/bias"),
    ("unsupported_layer", "Conv3D is not supported"),
])
def test_a_missing_or_corrupt_package_is_refused_naming_the_file(tmp_path: Path, case: str, message: str) -> None:
    good = make_package(tmp_path, weights=bytes(80))
    package = {
        "missing": lambda: tmp_path / "nsfwjs-4.3.0.tgz",
        "not_an_archive": lambda: (tmp_path / "x.tgz", (tmp_path / "x.tgz").write_bytes(b"not a tarball"))[0],
        "truncated": lambda: (tmp_path / "t.tgz", (tmp_path / "t.tgz").write_bytes(good.read_bytes()[:300]))[0],
        "other_package": lambda: make_package(tmp_path, name="left-pad"),
        "damaged_topology": lambda: make_package(tmp_path, model=bundle("{modelTopology:{model_config:[1,")),
        "no_weight_bundle": lambda: make_package(tmp_path),
        "short_weights": lambda: make_package(tmp_path, weights=bytes(70)),
        "unsupported_layer": lambda: make_package(tmp_path, weights=bytes(80), model=bundle(
            f"{{modelTopology:{TOPOLOGY.replace('GlobalAveragePooling2D', 'Conv3D')},weightsManifest:{MANIFEST}}}")),
    }[case]()
    with pytest.raises(InvalidInput) as raised:
        nsfwjs.convert(package, tmp_path / "out")
    assert str(package) in raised.value.detail and message in raised.value.detail
    assert not (tmp_path / "out" / nsfwjs.MANIFEST).exists()


def test_convert_command_exit_codes_and_messages(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "latentops.governance.nsfwjs", *args], capture_output=True,
                              text=True, check=False, timeout=120)

    usage = run("convert", "--help")
    assert usage.returncode == 0 and "--package" in usage.stdout and "--out" in usage.stdout
    assert run().returncode == 2
    missing = run("convert", "--package", str(tmp_path / "nope.tgz"), "--out", str(tmp_path / "out"))
    assert missing.returncode == 1 and f"{tmp_path / 'nope.tgz'} does not exist" in missing.stderr
    good = run("convert", "--package", str(make_package(tmp_path, weights=bytes(80))), "--out", str(tmp_path / "out"))
    assert good.returncode == 0 and "converted nsfwjs 0.0.1 (20 parameters)" in good.stdout
    shown = run("show", "--dir", str(tmp_path / "out"))
    assert shown.returncode == 0 and json.loads(shown.stdout)["parameters"] == 20
    assert run("show", "--dir", str(tmp_path)).returncode == 1


def test_tensorflow_same_padding_puts_the_odd_pixel_after() -> None:
    assert nsfwjs._same_padding(224, 3, 2, 1) == (0, 1)
    assert nsfwjs._same_padding(224, 3, 1, 1) == (1, 1)
    assert nsfwjs._same_padding(5, 4, 1, 1) == (1, 2)
    assert nsfwjs._same_padding(7, 1, 1, 1) == (0, 0)


def test_javascript_literals_parse_like_javascript() -> None:
    text = "{a:\"x\\u0041\\n\",'b':[1,.5,-2e3,!0,!1,null,void 0,'it\\'s'],3:{}}"
    assert nsfwjs.parse_literal(text, 0) == ({"a": "xA\n", "b": [1, 0.5, -2000.0, True, False, None, None, "it's"], "3": {}},
                                             len(text))
