"""relabel's error family, where the storage layer has always imported it from (``relabel.errors``)."""
from relabel.errors import ConfigError, RelabelError, SourceError, StoreError, UserError, named, setting

__all__ = ["RelabelError", "ConfigError", "SourceError", "StoreError", "UserError", "named", "setting"]
