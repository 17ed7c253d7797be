"""The Python client of the deconv service (httpx2), one method per route.

::

    from api.client import DeconvClient

    with DeconvClient("http://127.0.0.1:8000", api_key=None) as client:
        dataset = client.upload_dataset(["samples/camera.png", "samples/coins.png"])   # or a folder, or (name, bytes)
        job = client.submit({"dataset_id": dataset["id"], "layers": [{"n_filters": 8, "filter_size": 7, "lam": 1}],
                             "n_iter": 20})
        job = client.wait(job["id"], on_progress=lambda j: print(j["progress"]))
        filters = client.filters(job["id"])                   # (K, C, s, s) float32
        maps = client.encode(job["id"], new_images)            # (N, K, H', W')
        images = client.reconstruct(maps, job_id=job["id"])    # (N, C, H, W)
        model = client.model(job["id"])                        # a solver.StackModel, to use offline

Every refusal of the service raises :class:`DeconvAPIError`, whose message names the field(s) the service named
(``layers.0.lam: Input should be greater than 0 (got 0)``); so does a service that cannot be reached (``status``
None, the message names the URL). :meth:`DeconvClient.wait` raises :class:`JobWaitTimeout` when its timeout passes.
Arrays travel as ``.npy`` (``allow_pickle=False`` both ways).

The methods are grouped as the service's routers are: :mod:`.jobs` (datasets and jobs), :mod:`.results`,
:mod:`.models`, over :mod:`.connection`; what travels besides JSON is :mod:`.payloads`. The client does not import
the job system (nor Ray): it runs wherever httpx2 and numpy do.
"""

from __future__ import annotations

from workers.jobs.status import TERMINAL

from .errors import DeconvAPIError, JobWaitTimeout, describe_detail
from .jobs import JobMethods
from .models import ModelMethods
from .payloads import ImageParts, image_files
from .results import ResultMethods

__all__ = [
    "DeconvAPIError",
    "DeconvClient",
    "ImageParts",
    "JobWaitTimeout",
    "TERMINAL_STATUSES",
    "describe_detail",
    "image_files",
]

TERMINAL_STATUSES = TERMINAL
"""The job states that :meth:`DeconvClient.wait` stops at."""


class DeconvClient(JobMethods, ResultMethods, ModelMethods):
    """A connection to the deconv service, with one method per route.

    Parameters
    ----------
    base_url : str
        ``http://host:port`` of the service.
    api_key : str, optional
        Sent as ``X-API-Key`` (needed when the service has a key).
    timeout : float
        Seconds to wait for a connection and for each read (an upload or an encode can take a while).
    transport : httpx2.BaseTransport, optional
        For tests (``httpx2.ASGITransport``, ``httpx2.MockTransport``).

    Examples
    --------
    >>> import httpx2
    >>> answer = httpx2.MockTransport(lambda request: httpx2.Response(200, json={"status": "ok"}))
    >>> with DeconvClient("http://deconv.test", transport=answer) as client:
    ...     client.health()
    {'status': 'ok'}
    """

    def __enter__(self) -> DeconvClient:
        return self
