"""The HTTP service (FastAPI), its Python client and the `deconv` CLI. Not built yet (issue #4); only the
package exists so that the layout is fixed."""
