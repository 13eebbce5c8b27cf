"""gati services: inference, cache and trainer, each a gRPC server built on the gati library."""
