"""The YAML job file of `deconv learn`: LearnConfig's fields plus images, extra fields refused."""

from __future__ import annotations

import pytest

from configs import find_preset, samples_dir
from solver import LearnConfig, load_config
from workers.jobs.jobfile import JobFileError, load_job_file

VALID = """
images: pictures
workers: 2
layers:
  - {n_filters: 4, filter_size: 5, lam: 0.5}
n_iter: 3
preprocess: {grey: true}
"""


def _job(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_a_job_file_gives_its_learn_config_and_images_relative_to_the_file(tmp_path):
    job = load_job_file(_job(tmp_path, VALID))
    assert job.images == str((tmp_path / "pictures").resolve())
    assert job.workers == 2
    assert job.learn_config() == LearnConfig(
        layers=[{"n_filters": 4, "filter_size": 5, "lam": 0.5}], n_iter=3, preprocess={"grey": True}
    )


def test_an_absolute_images_folder_is_kept(tmp_path):
    job = load_job_file(_job(tmp_path, VALID.replace("images: pictures", f"images: {tmp_path / 'abs'}")))
    assert job.images == str(tmp_path / "abs")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("n_iter: 3", "n_iter: 3\nlearning_rate: 2"), "learning_rate"),
        (("lam: 0.5", "lam: -1"), "layers.0.lam"),
        (("lam: 0.5", "lam: 0"), "layers.0.lam"),
        (("workers: 2", "workers: 0"), "workers"),
        (("n_iter: 3", "n_iter: 3\ninference: {method: admm, rho: -2}"), "inference.admm.rho"),
    ],
)
def test_an_invalid_job_file_names_the_field(tmp_path, change, field):
    with pytest.raises(JobFileError, match=field.replace(".", r"\.")):
        load_job_file(_job(tmp_path, VALID.replace(*change)))


def test_a_job_file_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(JobFileError, match="mapping"):
        load_job_file(_job(tmp_path, "- just\n- a list\n"))


def test_a_job_file_that_is_not_yaml_is_refused(tmp_path):
    with pytest.raises(JobFileError, match="YAML"):
        load_job_file(_job(tmp_path, "layers: [unclosed\n"))


def test_a_missing_job_file_is_refused(tmp_path):
    with pytest.raises(JobFileError, match="cannot read"):
        load_job_file(tmp_path / "missing.yaml")


def test_a_preset_loads_by_name_as_a_job_file_without_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = load_job_file("quick")
    assert job.images is None
    assert job.learn_config() == load_config(find_preset("quick"))


def test_a_job_file_without_images_takes_them_from_the_command_line(tmp_path):
    job = load_job_file(_job(tmp_path, VALID.replace("images: pictures", "")))
    given = [samples_dir() / "moon.png", samples_dir()]
    assert job.image_paths(given) == [samples_dir() / "moon.png", *sorted(samples_dir().glob("*.png"))]


def test_a_job_file_without_images_and_none_given_names_images(tmp_path):
    job = load_job_file(_job(tmp_path, VALID.replace("images: pictures", "")))
    with pytest.raises(JobFileError, match="images.*--images"):
        job.image_paths(None)


def test_images_given_on_the_command_line_win_over_the_file_s_folder(tmp_path):
    job = load_job_file(_job(tmp_path, VALID))
    assert job.image_paths([samples_dir() / "coins.png"]) == [samples_dir() / "coins.png"]


def test_n_iter_from_the_command_line_replaces_the_file_s():
    assert load_job_file("quick").learn_config(n_iter=2).n_iter == 2
    assert load_job_file("quick").learn_config().n_iter == 40


def test_an_unknown_preset_is_a_job_file_error_listing_the_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(JobFileError, match="unknown preset 'quik'.*quick, zeiler2010"):
        load_job_file("quik")
