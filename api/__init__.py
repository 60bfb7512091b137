"""The HTTP API (FastAPI) for operators, researchers and integrators."""
