"""Trainer service: learns probes from activation records on Kafka, publishes bundles to Redis."""
