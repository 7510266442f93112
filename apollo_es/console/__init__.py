"""The annotator console: watch live runs in a browser and intervene (`apollo-es serve`)."""

from apollo_es.console.app import ConsoleSettings, create_app
from apollo_es.console.server import Server

__all__ = ["ConsoleSettings", "Server", "create_app"]
