"""The YAML job file of `deconv learn`: LearnConfig's fields plus images, extra fields refused."""

from __future__ import annotations

import pytest

from solver import LearnConfig
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
    assert job.images == (tmp_path / "pictures").resolve()
    assert job.workers == 2
    assert job.learn_config() == LearnConfig(layers=[{"n_filters": 4, "filter_size": 5, "lam": 0.5}], n_iter=3,
                                             preprocess={"grey": True})


def test_an_absolute_images_folder_is_kept(tmp_path):
    job = load_job_file(_job(tmp_path, VALID.replace("images: pictures", f"images: {tmp_path / 'abs'}")))
    assert job.images == tmp_path / "abs"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("n_iter: 3", "n_iter: 3\nlearning_rate: 2"), "learning_rate"),
        (("lam: 0.5", "lam: -1"), "layers.0.lam"),
        (("lam: 0.5", "lam: 0"), "layers.0.lam"),
        (("images: pictures", ""), "images"),
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
