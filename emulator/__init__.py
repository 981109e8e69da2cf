"""A local Salesforce org for tests, the demo and benchmarks (see emulator/README.md)."""

from emulator.app import create_app
from emulator.state import EmulatorConfig, EmulatorState

__all__ = ["EmulatorConfig", "EmulatorState", "create_app"]
