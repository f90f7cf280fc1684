"""MQTT input connector (paho-mqtt): JSON, single-value and Sparkplug B payloads to samples."""

from connectors.mqtt.source import MqttSource

__all__ = ["MqttSource"]
