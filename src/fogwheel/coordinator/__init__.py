"""The coordinator: FastAPI over the store. Routes are thin; decisions live in core/."""

from fogwheel.coordinator.server import CoordinatorConfig, build_app, serve

__all__ = ["CoordinatorConfig", "build_app", "serve"]
