"""The service's routes, one module per resource: :mod:`.health`, :mod:`.datasets`, :mod:`.jobs`,
:mod:`.results` (what a job produced) and :mod:`.models` (encode and reconstruct with a finished job's filters).

Each module exposes ``router``; :func:`api.app.create_app` includes them. Every router but health carries the
API-key check as a router dependency, so a new route cannot forget it.
"""
