"""``python -m tests.service.fake_server``: the app with the fake pipeline, run by uvicorn
exactly as ``faceserve serve`` runs it (``uvicorn_config``), in its own process.

For tests of the server's connection handling, which need a real socket and a real server
but not the face models. Settings come from the environment (``FACESERVE_*``)."""

from __future__ import annotations

import uvicorn

from service.api.app import create_app
from service.commands import uvicorn_config
from service.config import Settings
from tests.service.conftest import FakePipeline


def main() -> None:
    settings = Settings()
    app = create_app(settings, pipeline_factory=lambda _: FakePipeline())
    uvicorn.Server(uvicorn_config(app, settings, "warning")).run()


if __name__ == "__main__":
    main()
