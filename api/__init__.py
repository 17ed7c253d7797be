"""The service layer of deconv.

* :mod:`api.app`: ``create_app(settings)``, the FastAPI service (OpenAPI at ``/docs``), assembled from
  :mod:`api.routes` (one router per resource), :mod:`api.deps` (settings, store, runner, the key check),
  :mod:`api.errors` (error responses) and :mod:`api.uploads` (reading uploaded files);
* :mod:`api.settings`: ``Settings``, defaults overridden by ``DECONV_*`` environment variables;
* :mod:`api.schemas`: the JSON shapes shared by server, client and CLI;
* :mod:`api.client`: ``DeconvClient``, the Python client (httpx2), and ``DeconvAPIError``; a package with one
  module per group of routes;
* :mod:`api.cli`: the ``deconv`` command line (``serve``, ``learn``, ``submit``, ``status``, ``wait``, ``cancel``,
  ``filters``, ``encode``, ``reconstruct``, ``demo``, ``samples``), parsed by :mod:`api.parser`, with
  :mod:`api.learn` (``learn``, on Ray from this process), :mod:`api.commands` (the commands that talk to a service),
  :mod:`api.serve` (uvicorn in the foreground or in a thread), :mod:`api.demo`, and :mod:`api.exits` (the exit
  statuses).

Nothing is imported here, so ``import api`` stays cheap.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deconv")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"
