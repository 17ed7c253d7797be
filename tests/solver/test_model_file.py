"""Model files: a model saved by one process and loaded by a fresh one encodes and reconstructs bit-identically;
bad files are refused with a ValueError that says what is wrong."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from solver import (
    LayerSpec,
    LearnConfig,
    StackModel,
    encode_layers,
    encode_with,
    learn,
    learn_stack,
    load_model,
    project_down,
)
from solver.config import FilterUpdateConfig, FistaConfig
from solver.images.preprocess import PreprocessConfig
from solver.models.stack.files import MODEL_KIND, model_bytes, read_model, save_model
from solver.models.stack.model import MODEL_FORMAT
from solver.models.stack.projection import reconstruct_from

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: loads the model file, encodes the images with the model's defaults, and writes the
# maps, switches and the reconstruction from the top layer.
_FRESH = """
import sys
import numpy as np
from solver import encode_layers, load_model
from solver.models.stack.projection import reconstruct_from
model = load_model(sys.argv[1])
images = np.load(sys.argv[2], allow_pickle=False)
code = encode_layers(model, images)
out = {f"L{n}": m for n, m in enumerate(code.maps, start=1)}
out.update({f"S{n}": s for n, s in enumerate(code.switches, start=1) if s is not None})
out["recon"] = reconstruct_from(model, code, model.n_layers)
np.savez(sys.argv[3], **out)
"""


def in_fresh_process(tmp_path: Path, model_path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    np.save(tmp_path / "images.npy", images)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(
        [sys.executable, "-c", _FRESH, str(model_path), str(tmp_path / "images.npy"), str(tmp_path / "out.npz")],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    with np.load(tmp_path / "out.npz", allow_pickle=False) as data:
        return dict(data)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((3, 1, 14, 14)).astype(np.float32)


def test_learned_layer_encodes_bit_identically_in_a_fresh_process(tmp_path, images):
    result = learn(
        images,
        n_filters=4,
        filter_size=5,
        lam=0.1,
        n_iter=3,
        method="fista",
        preprocess=PreprocessConfig(contrast_normalise=False),
    )
    path = result.model.save(tmp_path / "layer.deconv")
    fresh = in_fresh_process(tmp_path, path, images)
    maps = encode_with(result, images).maps
    assert maps.dtype == np.float32 and np.count_nonzero(maps) > 0
    np.testing.assert_array_equal(fresh["L1"], maps)
    np.testing.assert_array_equal(fresh["recon"], project_down(result.model, maps, 1))


@pytest.mark.parametrize("reconstruct_to", ["below", "pixels"])
def test_learned_stack_encodes_bit_identically_in_a_fresh_process(tmp_path, images, reconstruct_to):
    config = LearnConfig(
        layers=[
            LayerSpec(n_filters=4, filter_size=3, lam=0.1, pool=(2, 2, 2)),
            LayerSpec(n_filters=3, filter_size=3, lam=0.1, connectivity="random-doubles:2"),
        ],
        inference=FistaConfig(max_iter=5),
        n_iter=2,
        reconstruct_to=reconstruct_to,
        filter_update=FilterUpdateConfig(max_iter=3),
    )
    model = learn_stack(images, config).model
    path = model.save(tmp_path / "stack.deconv")
    fresh = in_fresh_process(tmp_path, path, images)
    code = encode_layers(model, images)
    assert set(fresh) == {"L1", "L2", "S1", "recon"}
    np.testing.assert_array_equal(fresh["L1"], code.maps[0])
    np.testing.assert_array_equal(fresh["L2"], code.maps[1])
    np.testing.assert_array_equal(fresh["S1"], code.switches[0])
    np.testing.assert_array_equal(fresh["recon"], reconstruct_from(model, code, 2))


def test_model_file_reads_from_bytes_and_file_objects_with_everything_kept(tmp_path, images):
    two_channels = np.concatenate([images, images[..., ::-1]], axis=1)
    result = learn(
        two_channels,
        n_filters=3,
        filter_size=3,
        lam=0.2,
        n_iter=2,
        boundary="valid",
        p=0.5,
        connectivity=np.array([[True, False], [False, True], [True, True]]),
        preprocess=PreprocessConfig(contrast_normalise=False),
    )
    model = result.model
    data = model.to_bytes()
    with open(save_model(model, tmp_path / "m.deconv"), "rb") as fh:
        from_file = load_model(fh)
    for again in (load_model(data), load_model(io.BytesIO(data)), load_model(memoryview(data)), from_file):
        layer, original = again.layers[0], model.layers[0]
        np.testing.assert_array_equal(layer.filters, original.filters)
        assert layer.filters.dtype == original.filters.dtype
        np.testing.assert_array_equal(layer.connectivity, original.connectivity)
        assert (layer.lam, layer.p, layer.pool, layer.preprocess) == (0.2, 0.5, None, original.preprocess)
        assert (again.boundary, again.reconstruct_to, again.inference) == ("valid", "below", result.config.inference)


def test_model_file_bytes_depend_on_the_model_only(images):
    model = learn(images, n_filters=2, filter_size=3, lam=0.1, n_iter=1).model
    assert model.to_bytes() == model.to_bytes()
    assert load_model(model.to_bytes()).to_bytes() == model.to_bytes()


def test_save_replaces_the_file_atomically_and_leaves_no_temporary(tmp_path, images):
    path = tmp_path / "m.deconv"
    path.write_bytes(b"old")
    model = learn(images, n_filters=2, filter_size=3, lam=0.1, n_iter=1).model
    model.save(path)
    assert path.read_bytes() == model.to_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.deconv"]
    with pytest.raises(ValueError, match="does not exist"):
        model.save(tmp_path / "missing" / "m.deconv")


def test_extra_data_travels_beside_the_model(images):
    model = learn(images, n_filters=2, filter_size=3, lam=0.1, n_iter=1).model
    again, extra = read_model(model_bytes(model, extra={"history": [1.5, 1.25]}))
    assert extra == {"history": [1.5, 1.25]}
    np.testing.assert_array_equal(again.layers[0].filters, model.layers[0].filters)


def _rewrite(data: bytes, **changes: bytes | None) -> bytes:
    """The archive `data` with entries replaced (bytes) or removed (None)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            if name not in changes:
                dst.writestr(name, src.read(name))
        for name, value in changes.items():
            if value is not None:
                dst.writestr(name, value)
    return out.getvalue()


@pytest.fixture
def file_bytes(images) -> bytes:
    return learn(images, n_filters=2, filter_size=3, lam=0.1, n_iter=1).model.to_bytes()


def _description(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return json.loads(archive.read("model.json"))


def test_a_newer_format_is_refused_with_a_clear_error(file_bytes):
    body = _description(file_bytes)
    assert (body["kind"], body["format"]) == (MODEL_KIND, MODEL_FORMAT)
    newer = _rewrite(file_bytes, **{"model.json": json.dumps({**body, "format": MODEL_FORMAT + 1}).encode()})
    with pytest.raises(ValueError, match=f"model format {MODEL_FORMAT + 1} is newer than this deconv reads"):
        load_model(newer)


def test_an_array_that_needs_pickle_is_refused(file_bytes):
    npy = io.BytesIO()
    np.save(npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="filters-L1.npy is not a plain array"):
        load_model(_rewrite(file_bytes, **{"filters-L1.npy": npy.getvalue()}))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip", "not a deconv model file \\(not a zip archive"),
        ("no description", "it has no model.json"),
        ("other kind", "has kind 'something-else'"),
        ("missing array", "connectivity-L1"),
    ],
)
def test_files_that_are_not_models_are_refused(file_bytes, data, message):
    body = _description(file_bytes)
    cases = {
        "no description": _rewrite(file_bytes, **{"model.json": None}),
        "other kind": _rewrite(file_bytes, **{"model.json": json.dumps({**body, "kind": "something-else"}).encode()}),
        "missing array": _rewrite(file_bytes, **{"connectivity-L1.npy": None}),
    }
    with pytest.raises(ValueError, match=message):
        load_model(cases.get(data, data))


def _layer(**changes):
    return lambda body: {**body, "layers": [{**body["layers"][0], **changes}]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_layer(pool=[1.5, 2, 2]), r"pool sizes must be whole numbers, got 1\.5"),
        (_layer(pool=[float("inf"), 2, 2]), r"pool sizes must be whole numbers, got inf"),
        (_layer(lam_scale="weird"), r"layers\.0: lam_scale must be 'absolute' or 'relative', got 'weird'"),
        (_layer(preprocess=[1, 2]), r"layers\.0: preprocess must be a mapping or null, got \[1, 2\]"),
        (_layer(preprocess={"config": {}}), r"model\.json does not describe a model \(KeyError: 'stats'\)"),
        (lambda body: {**body, "extra": [1, 2]}, r"'extra' must be a mapping, got list"),
    ],
    ids=[
        "fractional pool",
        "infinite pool",
        "unknown lam_scale",
        "preprocess a list",
        "preprocess without stats",
        "extra a list",
    ],
)
def test_a_description_that_does_not_hold_a_model_is_a_value_error_naming_what(file_bytes, change, message):
    body = change(_description(file_bytes))
    with pytest.raises(ValueError, match=message):
        load_model(_rewrite(file_bytes, **{"model.json": json.dumps(body).encode()}))


def test_a_connectivity_table_of_other_numbers_is_refused(file_bytes):
    npy = io.BytesIO()
    np.save(npy, np.full((2, 1), 0.5))
    with pytest.raises(ValueError, match="connectivity must be a boolean"):
        load_model(_rewrite(file_bytes, **{"connectivity-L1.npy": npy.getvalue()}))


def test_damaged_compressed_bytes_are_a_value_error(file_bytes):
    compressed = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(file_bytes)) as src, zipfile.ZipFile(compressed, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name) * (50 if name.endswith(".npy") else 1))
    data = bytearray(compressed.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        member = next(i for i in archive.infolist() if i.filename.endswith(".npy"))
    start = member.header_offset + 30 + len(member.filename) + 8
    data[start : start + 16] = bytes(b ^ 0xFF for b in data[start : start + 16])
    with pytest.raises(ValueError, match="is damaged: a member does not decompress"):
        load_model(bytes(data))


def test_a_path_names_itself_in_the_error(tmp_path):
    (tmp_path / "bad.deconv").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.deconv"):
        load_model(tmp_path / "bad.deconv")


def test_the_service_description_without_kind_or_scale_still_reads(file_bytes):
    # model.json as the service stored it before model files: no "kind", no "lam_scale"
    body = _description(file_bytes)
    body.pop("kind")
    for layer in body["layers"]:
        layer.pop("lam_scale")
    model = load_model(_rewrite(file_bytes, **{"model.json": json.dumps(body).encode()}))
    assert model.layers[0].lam_scale == "absolute" and model.layers[0].lam_max is None


def test_stack_model_built_by_hand_has_no_inference_and_encodes_with_admm(images):
    model = StackModel.from_layers([np.ones((2, 1, 3, 3), np.float32) / 3], [None], [None], [0.1], [1.0])
    assert model.inference is None
    np.testing.assert_array_equal(
        encode_layers(model, images).maps[0], encode_layers(model, images, method="admm").maps[0]
    )
