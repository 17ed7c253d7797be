"""The presets and sample images ship inside the package (``configs``) and are found through
:mod:`importlib.resources` from any working folder; ``load_config`` takes a preset by name as well as by path."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest
import yaml
from PIL import Image

import configs
from solver.config import LearnConfig, load_config

PRESETS = ["demo", "online", "quick", "zeiler2010", "zeiler2010-layer1", "zeiler2011"]


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path, monkeypatch):
    """Every test runs in an empty folder, as a user of the installed package would."""
    monkeypatch.chdir(tmp_path)


def test_the_presets_are_listed_by_name():
    assert configs.preset_names() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_is_found_by_name_inside_the_package(name):
    path = configs.find_preset(name)
    assert path == importlib.resources.files("configs") / f"{name}.yaml"
    assert path.is_file()


@pytest.mark.parametrize("name", PRESETS)
def test_load_config_takes_a_preset_by_name(name):
    assert isinstance(load_config(name), LearnConfig)


def test_a_preset_name_with_its_suffix_is_the_same_preset():
    assert load_config("zeiler2010.yaml") == load_config("zeiler2010")
    assert [layer.n_filters for layer in load_config("zeiler2010").layers] == [9, 45]


def test_an_unknown_preset_name_is_a_value_error_listing_the_presets():
    with pytest.raises(ValueError, match="zeiler2012") as info:
        load_config("zeiler2012")
    assert all(name in str(info.value) for name in PRESETS)


def test_a_file_in_the_working_folder_wins_over_the_preset_of_that_name(tmp_path):
    data = yaml.safe_load(configs.find_preset("quick").read_text()) | {"n_iter": 3}
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(data))
    assert load_config("quick.yaml").n_iter == 3
    assert load_config("quick").n_iter == 40


def test_a_missing_path_with_a_folder_is_not_taken_for_a_preset_name():
    with pytest.raises(ValueError, match=r"cannot read the config file 'configs/quick.yaml': No such file"):
        load_config(Path("configs") / "quick.yaml")


def test_the_sample_images_are_eight_grey_128_pixel_pngs_inside_the_package():
    paths = configs.sample_paths()
    assert [p.name for p in paths] == [
        "astronaut.png",
        "brick.png",
        "camera.png",
        "chelsea.png",
        "clock.png",
        "coffee.png",
        "coins.png",
        "moon.png",
    ]
    assert {p.parent for p in paths} == {importlib.resources.files("configs") / "samples"}
    assert {(Image.open(p).size, Image.open(p).mode) for p in paths} == {((128, 128), "L")}
