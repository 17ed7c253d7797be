"""Job specs and the coordinator refuse what distributed learning cannot do (yet), naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from solver.config import LayerSpec, LearnConfig
from workers.jobs.spec import JobSpec

LAYER = {"n_filters": 2, "filter_size": 3, "lam": 1.0}


def test_a_job_refuses_recentred_filter_updates():
    with pytest.raises(ValidationError, match="recentre") as info:
        JobSpec.model_validate({"dataset_id": "0" * 32, "layers": [LAYER], "filter_update": {"recentre": True}})
    assert info.value.errors()[0]["loc"] == ("filter_update",)


@pytest.mark.parametrize(
    "config",
    [
        LearnConfig(layers=[LayerSpec(**LAYER), LayerSpec(**LAYER)]),
        LearnConfig(layers=[LayerSpec(**LAYER)], filter_update={"recentre": True}),
    ],
    ids=["two-layers", "recentre"],
)
def test_the_coordinator_refuses_what_it_would_otherwise_run_differently(config, tmp_path):
    pytest.importorskip("ray")
    from workers.distributed.coordinator import Coordinator

    with pytest.raises(ValueError, match="layers|recentre"):
        Coordinator([tmp_path / "missing.npy"], config)
