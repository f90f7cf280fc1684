"""InfluxDB sink: own line-protocol encoder, v2 API via influxdb-client, 1.x ``/write`` via the stdlib.

Importing the package registers the sink kind ``influxdb``.
"""

from connectors.influxdb.config import InfluxSinkConfig
from connectors.influxdb.sink import InfluxSink, InfluxSinkStats, RejectedLines, WriteResult

__all__ = ["InfluxSink", "InfluxSinkConfig", "InfluxSinkStats", "RejectedLines", "WriteResult"]
