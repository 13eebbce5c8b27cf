"""Cache service: holds probe bundles per model and answers lookups over a gRPC stream."""
