"""OPC UA input connector (asyncua): subscriptions, polled reads and result-ready triggers."""

from connectors.opcua.config import OpcuaSourceConfig
from connectors.opcua.source import OpcuaSource

__all__ = ["OpcuaSource", "OpcuaSourceConfig"]
