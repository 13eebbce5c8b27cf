"""`gati bench accuracy`: top-1 of a model served through gRPC, and batch-1 latency in-process
vs through gRPC, measured side by side (interleaved) in one run."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import torch
from tqdm import tqdm

from bench.common import environment, served_inference, summarize, table, write_json
from gati import names
from gati.api import grpc_service_pb2 as pb
from gati.api import grpc_service_pb2_grpc as pb_grpc
from gati.data import load_dataset
from gati.models import load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", required=True, help="resnet20/32/44/56 or package.module:fn")
    parser.add_argument("--weights", required=True, help="model weights")
    parser.add_argument("--data", required=True, help="npz or CIFAR-10 python archive")
    parser.add_argument("--start", type=int, default=0, help="first image of the range")
    parser.add_argument(
        "--stop", type=int, default=None, help="end of the range, exclusive (default: all)"
    )
    parser.add_argument("--batch", type=int, default=250, help="batch size for the top-1 pass")
    parser.add_argument(
        "--latency-samples", type=int, default=300, help="batch-1 requests timed each way (0: skip)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads, in-process and of the served model (0: torch's default)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the figures here as JSON")


def request(batch: np.ndarray) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name="bench")
    r.inputs.add(name=names.INPUT_IMAGE, datatype="UINT8", shape=list(batch.shape))
    r.raw_input_contents.append(batch.tobytes())
    r.parameters[names.PARAM_CACHES].bool_param = False
    return r


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = load_dataset(args.data, args.start, args.stop)
    extra = ["--exact-cache-entries", "0", "--threads", str(args.threads)]
    with (
        tempfile.TemporaryDirectory() as logs,
        served_inference(Path(logs), "bench", args.arch, args.weights, *extra) as port,
        grpc.insecure_channel(
            f"127.0.0.1:{port}",
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        ) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        correct = 0
        for i in tqdm(range(0, len(x), args.batch), desc="top-1 via gRPC", unit="batch"):
            reply = stub.ModelInfer(request(x[i : i + args.batch]))
            labels = np.frombuffer(reply.raw_output_contents[1], dtype=np.int64)
            correct += int((labels == y[i : i + args.batch]).sum())
        top1 = 100.0 * correct / len(x)
        latency = {}
        if args.latency_samples:
            model = load_model(args.arch, args.weights)
            local, remote = [], []
            for i in tqdm(range(args.latency_samples), desc="batch-1 latency", unit="req"):
                row = x[i % len(x)][None]
                t = time.perf_counter()
                with torch.inference_mode():
                    model(torch.from_numpy(row))
                local.append(time.perf_counter() - t)
                t = time.perf_counter()
                stub.ModelInfer(request(row))
                remote.append(time.perf_counter() - t)
            latency = {"in_process": summarize(local), "grpc": summarize(remote)}
    result = {
        "arch": args.arch,
        "images": len(x),
        "top1": round(top1, 2),
        "latency": latency,
        "environment": environment(),
    }
    print(f"\n{args.arch}: top-1 {top1:.2f}% on {len(x)} images (served through gRPC)")
    if latency:
        rows = [[k, v["mean_ms"], v["p50_ms"], v["p99_ms"]] for k, v in latency.items()]
        print(table(["batch-1 path", "mean ms", "p50 ms", "p99 ms"], rows))
    write_json(args.json, result)
    return 0
