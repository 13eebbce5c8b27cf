"""Inference service: Open Inference Protocol v2 over gRPC, early exit through the cache service."""
