"""What is on disk and how to read it back: image sources, the label store, exports.

This package knows nothing about models or training.
"""
from .errors import ConfigError, RelabelError, SourceError, StoreError, UserError
from .sources import ImageSource, open_source, fingerprint
from .store import LabelStore, StoreHeader, SCHEMA_VERSION

__all__ = ["RelabelError", "ConfigError", "SourceError", "StoreError", "UserError", "ImageSource", "open_source", "fingerprint", "LabelStore", "StoreHeader",
           "SCHEMA_VERSION"]
