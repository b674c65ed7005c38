"""infocut: split inference for frugal video anomaly detection."""

__version__ = "0.1.0"
