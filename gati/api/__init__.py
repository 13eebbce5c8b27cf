"""Generated gRPC stubs (from proto/; regenerate with `make proto`).

`grpc_service_pb2*` is the Open Inference Protocol v2 (package `inference`), `cache_pb2*`
the gati.v1 cache API, `records_pb2` the activation records carried on Kafka.
"""
