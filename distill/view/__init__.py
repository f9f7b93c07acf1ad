"""`distill view RUN`: a local, read-only web app to browse a label run — a grid of samples
with filters and sorts, a sample page with toggleable label layers (and a student's beside
them), a run page with progress and the quarantine. `create_app` builds it; the CLI serves it
with uvicorn on 127.0.0.1."""

from distill.view.app import create_app

__all__ = ["create_app"]
