"""What the routes depend on: the settings, the job store, the runner (all set on the app by
:func:`api.app.create_app`), and the API-key check that guards every router but health.

Routes declare them by type (``store: StoreDep``), so a test can replace any of them with
``app.dependency_overrides`` and nothing is read from a module-level global.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader

from workers.jobs.runner import JobRunner
from workers.jobs.store import JobStore

from .settings import Settings

_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="needed when the service has a key")


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with.

    Parameters
    ----------
    request : fastapi.Request

    Returns
    -------
    Settings
    """
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    """The app's job store (records and artifacts).

    Parameters
    ----------
    request : fastapi.Request

    Returns
    -------
    workers.jobs.store.JobStore
    """
    return request.app.state.store


async def get_runner(request: Request) -> JobRunner:
    """The app's job runner.

    Parameters
    ----------
    request : fastapi.Request

    Returns
    -------
    workers.jobs.runner.JobRunner
    """
    return request.app.state.runner


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]


async def require_key(settings: SettingsDep, key: Annotated[str | None, Depends(_key_header)] = None) -> None:
    """Refuse the request unless it carries the service's key (when it has one) in ``X-API-Key``.

    Parameters
    ----------
    settings : Settings
        ``settings.api_key`` is the key; None lets every request through.
    key : str or None
        The ``X-API-Key`` header.

    Raises
    ------
    fastapi.HTTPException
        401 when the key is missing or wrong; the comparison takes the same time whatever the key sent.
    """
    if settings.api_key is None:
        return
    if key is None or not hmac.compare_digest(key.encode(), settings.api_key.encode()):
        raise HTTPException(401, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "APIKey"})


guarded = [Depends(require_key)]
"""Router dependencies of every router that needs the key (all but health)."""
