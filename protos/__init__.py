"""The edge<->cloud gRPC service (infocut.proto) and its generated stubs.

Regenerate with `make protos`; tests/test_protos.py checks the committed stubs are current.
"""
