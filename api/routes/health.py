"""``GET /health``: the service's version and its runner's state; needs no key, for load balancers."""

from __future__ import annotations

from fastapi import APIRouter

from .. import __version__
from ..deps import RunnerDep, SettingsDep, StoreDep
from ..schemas import HealthOut

router = APIRouter(tags=["service"])


@router.get("/health", response_model=HealthOut)
def health(settings: SettingsDep, store: StoreDep, runner: RunnerDep) -> HealthOut:
    # the runner is "disabled" when the service accepts jobs but runs none (DECONV_RUN_JOBS=false)
    state = "running" if runner.alive else ("disabled" if not settings.run_jobs else "stopped")
    return HealthOut(status="ok", version=__version__, runner=state, queued=store.count_jobs("queued"))
