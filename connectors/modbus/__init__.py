"""Modbus TCP/RTU input connector (kind ``modbus``): polled points and result-ready triggers."""

from connectors.modbus.source import ModbusSource

__all__ = ["ModbusSource"]
