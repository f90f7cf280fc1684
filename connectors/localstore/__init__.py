"""Embedded series store: with no InfluxDB configured, series go to one local SQLite file.

Importing the package registers the sink kind ``localstore``. ``shopspc series
query`` and ``shopspc series export`` read the file.
"""

from connectors.localstore.config import LocalStoreConfig
from connectors.localstore.sink import LocalStoreSink, LocalStoreSinkStats
from connectors.localstore.store import Row, SeriesStore, StoreFullError, StoreStats

__all__ = [
    "LocalStoreConfig",
    "LocalStoreSink",
    "LocalStoreSinkStats",
    "Row",
    "SeriesStore",
    "StoreFullError",
    "StoreStats",
]
