"""The HTTP face: create_app, routes, error handlers, SSE."""

from oasis.server.app import create_app

__all__ = ["create_app"]
