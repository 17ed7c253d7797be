"""The scikit-learn estimators: scikit-learn's own checks, Pipeline and clone, the input layouts, and saving and
loading through the model file (bit-identical maps in a fresh process).

scikit-learn's checks draw 2-D X of a few features (1, 2, 3, 5, 10), mostly not a square number, so they run on
estimators that read each row as an image one pixel high (``image_shape=(1, -1)``) with 1×1 filters. With that,
no check is skipped or expected to fail (``check_array_api_input`` is skipped by scikit-learn itself unless
SCIPY_ARRAY_API is set). With the default ``image_shape=None`` a 2-D X must hold flattened square images, and the
checks' non-square X is refused with a ValueError (tested below).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from configs import samples_dir  # noqa: E402
from solver import encode, encode_layers, encode_with, lambda_max, learn, load_model  # noqa: E402
from solver.estimators import ConvolutionalDictionaryLearning, DeconvolutionalNetwork  # noqa: E402
from solver.models.learn import initial_filters  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = {"n_iter": 2, "inner_iter": 3, "encode_iter": 20, "image_shape": (1, -1)}
TWO_LAYERS = [{"n_filters": 2, "filter_size": 1, "lam": 0.1}, {"n_filters": 2, "filter_size": 1, "lam": 0.1}]


@parametrize_with_checks(
    [
        ConvolutionalDictionaryLearning(n_filters=2, filter_size=1, **TINY),
        DeconvolutionalNetwork(layers=TWO_LAYERS, **TINY),
    ]
)
def test_scikit_learn_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((4, 1, 12, 12)).astype(np.float32)


@pytest.fixture(scope="module")
def cdl(images) -> ConvolutionalDictionaryLearning:
    return ConvolutionalDictionaryLearning(
        n_filters=3, filter_size=3, lam=0.1, n_iter=3, method="fista", random_state=1
    ).fit(images)


def test_fit_learns_what_learn_learns(images, cdl):
    result = learn(images, n_filters=3, filter_size=3, lam=0.1, n_iter=3, method="fista", seed=1)
    np.testing.assert_array_equal(cdl.filters_, result.filters)
    assert cdl.history_ == result.history and cdl.n_iter_ == 3 and cdl.lam_ == 0.1 and cdl.lam_max_ is None
    np.testing.assert_array_equal(cdl.transform(images), encode_with(result, images).maps)


def test_transform_inverse_transform_and_score(images, cdl):
    maps = cdl.transform(images)
    assert maps.shape == (4, 3, 12, 12) and maps.dtype == np.float32
    recon = cdl.inverse_transform(maps)
    assert recon.shape == images.shape and recon.dtype == np.float32
    expected = encode(images, cdl.filters_, 0.1, method="fista")
    assert cdl.score(images) == pytest.approx(-expected.objective, rel=1e-6)
    half = 0.5 * np.sum((recon - images).astype(np.float64) ** 2) + 0.1 * np.abs(maps).sum()
    assert -cdl.score(images) == pytest.approx(half, rel=1e-4)  # −score is E of the maps transform gives


def test_flattened_images_give_flattened_maps(images, cdl):
    flat = ConvolutionalDictionaryLearning(
        n_filters=3, filter_size=3, lam=0.1, n_iter=3, method="fista", random_state=1, image_shape=(12, 12)
    ).fit(images.reshape(4, -1))
    np.testing.assert_array_equal(flat.filters_, cdl.filters_)
    maps = flat.transform(images.reshape(4, -1))
    np.testing.assert_array_equal(maps, cdl.transform(images).reshape(4, -1))
    np.testing.assert_array_equal(
        flat.inverse_transform(maps), cdl.inverse_transform(cdl.transform(images)).reshape(4, -1)
    )
    assert flat.n_features_in_ == 144 and flat.input_shape_ == (1, 12, 12)


def test_square_is_the_default_layout_and_other_shapes_are_refused(images):
    est = ConvolutionalDictionaryLearning(n_filters=2, filter_size=3, n_iter=1, random_state=0)
    assert est.fit(images.reshape(4, -1)).input_shape_ == (1, 12, 12)
    with pytest.raises(ValueError, match="143 features, not a square number: set image_shape"):
        est.fit(images.reshape(4, -1)[:, :143])
    with pytest.raises(ValueError, match=r"image_shape \(5, 5\) must be"):
        est.set_params(image_shape=(5, 5)).fit(images.reshape(4, -1))


def test_relative_lam(images):
    est = ConvolutionalDictionaryLearning(
        n_filters=3, filter_size=3, lam=0.4, lam_scale="relative", n_iter=2, random_state=2
    ).fit(images)
    expected = lambda_max(images, initial_filters(3, 1, 3, seed=2, norm="filter"))
    assert est.lam_max_ == pytest.approx(expected, rel=1e-6)
    assert est.lam_ == pytest.approx(0.4 * est.lam_max_, rel=1e-12)


def test_parameters_are_keyword_only_and_clone_keeps_them(cdl):
    with pytest.raises(TypeError):
        ConvolutionalDictionaryLearning(4)  # type: ignore[misc]
    twin = clone(cdl)
    assert twin.get_params() == cdl.get_params() and not hasattr(twin, "model_")
    assert twin.set_params(lam=0.3).lam == 0.3 and cdl.lam == 0.1


def test_network_transforms_each_layer_and_projects_down(images):
    net = DeconvolutionalNetwork(
        layers=[
            {"n_filters": 3, "filter_size": 3, "lam": 0.1},
            {"n_filters": 4, "filter_size": 3, "lam": 0.1, "pool": [2, 2, 2]},
        ],
        n_iter=2,
        random_state=0,
        boundary="valid",
    ).fit(images)
    assert [f.shape for f in net.filters_] == [(3, 1, 3, 3), (4, 3, 3, 3)] and net.n_iter_ == [2, 2]
    code = encode_layers(net.model_, images)
    np.testing.assert_array_equal(net.transform(images, layer=1), code.maps[0])
    np.testing.assert_array_equal(net.transform(images), code.maps[1])
    assert net.transform(images).shape == (4, 4, 16, 16)
    assert net.inverse_transform(code.maps[1]).shape == images.shape
    assert net.set_params(pooled=True).transform(images).shape == (4, 2, 8, 8)
    with pytest.raises(ValueError, match="layer must be between 1 and 2"):
        net.transform(images, layer=3)


def _labelled_crops(side: int = 16, per_image: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Crops of three sample images, labelled by the image they come from."""
    crops, labels = [], []
    for label, name in enumerate(["brick.png", "coins.png", "moon.png"]):
        picture = np.asarray(Image.open(samples_dir() / name).convert("L"), dtype=np.float32) / 255
        for i in range(per_image):
            top, left = 8 + 19 * i, 100 - 17 * i
            crops.append(picture[top : top + side, left : left + side])
            labels.append(label)
    return np.stack(crops).reshape(len(crops), -1), np.array(labels)


def test_pipeline_of_pooled_maps_and_a_classifier():
    X, y = _labelled_crops()
    net = DeconvolutionalNetwork(
        layers=[
            {"n_filters": 4, "filter_size": 5, "lam": 0.05, "pool": [1, 2, 2]},
            {"n_filters": 4, "filter_size": 3, "lam": 0.05, "pool": [1, 2, 2]},
        ],
        n_iter=2,
        encode_iter=30,
        image_shape=(16, 16),
        pooled=True,
        random_state=0,
        preprocess={"contrast_normalise": False},
    )
    pipeline = Pipeline([("net", net), ("classify", LogisticRegression(max_iter=500))]).fit(X, y)
    features = pipeline[:-1].transform(X)
    assert features.shape == (18, 4 * 4 * 4)  # the top layer's maps, 8×8, pooled by 2×2
    assert pipeline.predict(X).shape == (18,)
    assert 0.0 <= pipeline.score(X, y) <= 1.0
    assert clone(pipeline).get_params()["net__pooled"] is True


# Loads the estimator from the file in a fresh interpreter and writes its maps of the images.
_FRESH = """
import sys
import numpy as np
from solver.estimators import {cls}
est = {cls}.load(sys.argv[1])
np.save(sys.argv[3], est.transform(np.load(sys.argv[2])))
"""


@pytest.mark.parametrize("cls", [ConvolutionalDictionaryLearning, DeconvolutionalNetwork])
def test_saved_estimator_transforms_bit_identically_in_a_fresh_process(tmp_path, images, cls):
    params = (
        {"n_filters": 3, "filter_size": 3, "lam": 0.1}
        if cls is ConvolutionalDictionaryLearning
        else {
            "layers": [{"n_filters": 3, "filter_size": 3, "lam": 0.1}, {"n_filters": 2, "filter_size": 3, "lam": 0.2}]
        }
    )
    est = cls(**params, n_iter=2, random_state=3, preprocess={"contrast_normalise": False}).fit(images)
    path = est.save(tmp_path / "est.deconv")
    np.save(tmp_path / "images.npy", images)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(
        [
            sys.executable,
            "-c",
            _FRESH.format(cls=cls.__name__),
            str(path),
            str(tmp_path / "images.npy"),
            str(tmp_path / "maps.npy"),
        ],
        check=True,
        env=env,
        timeout=300,
    )
    np.testing.assert_array_equal(np.load(tmp_path / "maps.npy"), est.transform(images))
    again = cls.load(path)
    assert again.get_params() == est.get_params() and again.history_ == est.history_
    np.testing.assert_array_equal(encode_layers(load_model(path), images).maps[-1], est.transform(images))


def test_a_plain_model_file_loads_into_an_estimator(tmp_path, images):
    result = learn(images, n_filters=3, filter_size=3, lam=0.2, lam_scale="relative", n_iter=2, method="fista")
    est = ConvolutionalDictionaryLearning.load(result.model.to_bytes())
    assert (est.n_filters, est.filter_size, est.lam_scale, est.method) == (3, 3, "relative", "fista")
    assert est.lam == pytest.approx(0.2, rel=1e-12) and est.history_ == []
    np.testing.assert_array_equal(est.transform(images), encode_with(result, images).maps)
    with pytest.raises(ValueError, match="DeconvolutionalNetwork.load"):
        ConvolutionalDictionaryLearning.load(
            DeconvolutionalNetwork(layers=TWO_LAYERS, n_iter=1, random_state=0).fit(images).model_.to_bytes()
        )


def test_import_solver_does_not_import_scikit_learn():
    code = (
        "import sys, solver; assert 'sklearn' not in sys.modules; "
        "assert solver.DeconvolutionalNetwork.__module__ == 'solver.estimators'"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


# partial_fit: the online learner -------------------------------------------------------------------------------


def _sample_crops(n: int, side: int = 24) -> np.ndarray:
    """`n` crops of the bundled sample images, grey in [0, 1] minus their mean (float32, (n, 1, side, side))."""
    pictures = [
        np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255 for p in sorted(samples_dir().glob("*.png"))
    ]
    crops = []
    for i in range(n):
        picture = pictures[i % len(pictures)]
        top, left = (13 * i) % (picture.shape[0] - side), (29 * i) % (picture.shape[1] - side)
        crop = picture[top : top + side, left : left + side]
        crops.append(crop - crop.mean())
    return np.stack(crops)[:, None]


def test_partial_fit_over_batches_approaches_fit():
    X = _sample_crops(16)
    params = {"n_filters": 4, "filter_size": 5, "lam": 0.05, "encode_iter": 100, "random_state": 0}
    fitted = ConvolutionalDictionaryLearning(n_iter=15, **params).fit(X)
    online = ConvolutionalDictionaryLearning(batch_size=4, **params)
    start_filters = initial_filters(4, 1, 5, seed=0, norm="filter")
    e_start = encode(X, start_filters, 0.05, max_iter=100).objective
    for _ in range(4):  # passes over the images, a call per batch
        for batch in np.split(X, 4):
            online.partial_fit(batch)
    e_fit, e_online = -fitted.score(X), -online.score(X)
    assert online.n_iter_ == 16 and len(online.history_) == 16
    assert e_online < 0.8 * e_start
    assert e_online <= 1.05 * e_fit


def test_partial_fit_keeps_the_statistics_between_calls():
    from solver import learn_online

    X = _sample_crops(8)
    est = ConvolutionalDictionaryLearning(n_filters=3, filter_size=3, lam=0.05, method="fista", random_state=0)
    est.partial_fit(X[:4]).partial_fit(X[4:])
    expected = learn_online(X, 3, 3, 0.05, batch_size=4, method="fista", seed=0)
    np.testing.assert_array_equal(est.filters_, expected.filters)
    assert est.online_.n_images == 8 and est.n_iter_ == 2


def test_partial_fit_cuts_a_call_into_batches():
    X = _sample_crops(8)
    est = ConvolutionalDictionaryLearning(n_filters=3, filter_size=3, lam=0.05, batch_size=3, random_state=0)
    est.partial_fit(X)
    assert est.n_iter_ == 3  # 3 + 3 + 2 images


def test_partial_fit_after_fit_continues_from_its_filters_and_fit_resets():
    X = _sample_crops(8)
    est = ConvolutionalDictionaryLearning(n_filters=3, filter_size=3, lam=0.05, n_iter=5, random_state=0).fit(X)
    e_fit = -est.score(X)
    est.partial_fit(X)
    assert est.n_iter_ == 1
    assert -est.score(X) <= 1.05 * e_fit  # started from fit's filters, not from the seeded ones
    est.fit(X)
    assert not hasattr(est, "online_") and est.n_iter_ == 5


def test_partial_fit_with_relative_lam_and_preprocessing():
    X = _sample_crops(8)
    est = ConvolutionalDictionaryLearning(
        n_filters=3,
        filter_size=3,
        lam=0.2,
        lam_scale="relative",
        preprocess={"contrast_normalise": False},
        random_state=0,
    )
    est.partial_fit(X[:4]).partial_fit(X[4:])
    assert est.lam_max_ > 0 and est.lam_ == pytest.approx(0.2 * est.lam_max_)
    assert est.model_.layers[0].preprocess is not None


def test_clone_of_a_partially_fitted_estimator_is_unfitted():
    X = _sample_crops(4)
    est = ConvolutionalDictionaryLearning(n_filters=3, filter_size=3, batch_size=2, forget=2.0, random_state=0)
    est.partial_fit(X)
    copy = clone(est)
    assert copy.get_params()["batch_size"] == 2 and copy.get_params()["forget"] == 2.0
    assert not hasattr(copy, "online_") and not hasattr(copy, "filters_")


def _grey(n: int = 2, side: int = 16) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 1, side, side)).astype(np.float32)


def test_the_network_fits_with_its_default_layers():
    net = DeconvolutionalNetwork(n_iter=1, random_state=0).fit(_grey())
    assert [layer.n_filters for layer in net.model_.layers] == [8, 36]  # 8 singles and 28 pairs of layer 1's maps
    assert net.transform(_grey()).shape == (2, 36, 16, 16)


def test_a_model_fitted_on_uint8_images_encodes_them_as_its_file_does_anywhere(tmp_path):
    from solver import PreprocessConfig

    pixels = (np.random.default_rng(0).random((4, 1, 16, 16)) * 255).astype(np.uint8)
    preprocess = PreprocessConfig(zero_mean=True, contrast_normalise=False, rescale=True)
    est = ConvolutionalDictionaryLearning(
        n_filters=3, filter_size=3, n_iter=2, random_state=0, method="fista", encode_iter=20, preprocess=preprocess
    ).fit(pixels)
    est.save(tmp_path / "m.deconv")
    elsewhere = encode_layers(load_model(tmp_path / "m.deconv"), pixels, max_iter=20).maps[0]
    assert np.abs(elsewhere).max() > 0.1
    np.testing.assert_array_equal(est.transform(pixels), elsewhere)
    unit = ConvolutionalDictionaryLearning(
        n_filters=3, filter_size=3, n_iter=2, random_state=0, method="fista", encode_iter=20, preprocess=preprocess
    ).fit(pixels.astype(np.float32) / 255)
    np.testing.assert_allclose(unit.model_.layers[0].filters, est.model_.layers[0].filters, atol=1e-5)


def test_numpy_valued_parameters_survive_save_and_load(tmp_path):
    X = _grey(side=12)
    est = ConvolutionalDictionaryLearning(
        n_filters=3, filter_size=3, n_iter=np.int64(2), encode_iter=np.int64(5), random_state=np.int64(0)
    ).fit(X)
    est.save(tmp_path / "m.deconv")
    back = ConvolutionalDictionaryLearning.load(tmp_path / "m.deconv")
    assert (back.n_iter, back.encode_iter, back.random_state) == (2, 5, 0)
    np.testing.assert_array_equal(back.transform(X), est.transform(X))
    table = np.array([[True, False], [True, True]])
    layers = [
        {"n_filters": 2, "filter_size": 3, "lam": 0.1},
        {"n_filters": 2, "filter_size": 3, "lam": 0.1, "connectivity": table},
    ]
    net = DeconvolutionalNetwork(layers=layers, n_iter=1, random_state=0).fit(X)
    net.save(tmp_path / "net.deconv")
    assert DeconvolutionalNetwork.load(tmp_path / "net.deconv").layers[1]["connectivity"] == table.tolist()


def test_the_network_loads_a_dictionary_learners_file_with_an_empty_history(tmp_path):
    X = _grey(side=12)
    ConvolutionalDictionaryLearning(n_filters=3, filter_size=3, n_iter=2, random_state=0).fit(X).save(tmp_path / "m")
    net = DeconvolutionalNetwork.load(tmp_path / "m")
    assert net.history_ == [[]] and net.transform(X).shape == (2, 3, 12, 12)


def test_a_pooled_networks_pooled_maps_are_not_projected_without_their_switches():
    layers = [
        {"n_filters": 3, "filter_size": 3, "lam": 0.1, "pool": [1, 2, 2]},
        {"n_filters": 4, "filter_size": 3, "lam": 0.1},
    ]
    net = DeconvolutionalNetwork(layers=layers, n_iter=1, random_state=0, pooled=True).fit(_grey(side=12))
    pooled = net.transform(_grey(side=12), layer=1)
    assert pooled.shape == (2, 3, 6, 6)
    with pytest.raises(ValueError, match="layer 1 pools and the estimator is pooled.*switches"):
        net.inverse_transform(pooled, layer=1)
