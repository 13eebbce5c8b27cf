"""`gati health ADDRESS`: ask a service's gRPC health, over TLS when it serves TLS.

A kubelet's own gRPC probe dials in plaintext and shows no certificate, so a service behind
(mutual) TLS is probed with this command instead (deploy/k8s/components/tls). It reads the
container's own TLS settings (GATI_TLS_CA, GATI_TLS_CERT, GATI_TLS_KEY): a pod presents its
own certificate to itself. Exit status: 0 SERVING, 1 answered but not serving, 2 no answer.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gati.config import ConfigError, env_name
from services.common.tls import ClientTls, channel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", help="host:port of the service's gRPC port")
    parser.add_argument(
        "--service",
        default="",
        help='health service name (default "": liveness; gati.v1.CacheService and the like: '
        "readiness)",
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    for field, what in (
        ("tls_ca", "CA that verifies the service (set: dial with TLS)"),
        ("tls_cert", "client certificate, for mutual TLS"),
        ("tls_key", "key of --tls-cert"),
    ):
        parser.add_argument(
            "--" + field.replace("_", "-"),
            default=os.environ.get(env_name(field)),
            help=f"PEM file: {what} (env {env_name(field)})",
        )


def run(args: argparse.Namespace) -> int:
    ca, cert, key = (v or None for v in (args.tls_ca, args.tls_cert, args.tls_key))  # "": unset
    if ca is None and cert is not None:
        raise ConfigError("tls_ca: a client certificate needs the CA that verifies the service")
    tls = ClientTls(ca, cert, key) if ca else None
    request = health_pb2.HealthCheckRequest(service=args.service)
    with channel(args.address, tls) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"{args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 2
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address} {args.service or '(liveness)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
