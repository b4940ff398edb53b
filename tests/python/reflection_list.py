#!/usr/bin/env python3
"""Lists the services of gRPC servers through server reflection v1alpha, the only version
the official Python client (grpcio-reflection) speaks. Prints {target: [services]} as JSON.

    python3 -m pip install grpcio grpcio-reflection
    python3 tests/python/reflection_list.py 127.0.0.1:50051 127.0.0.1:50052
"""
import json
import sys

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def services(target: str) -> list:
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30)
        return sorted(s.name for r in replies for s in r.list_services_response.service)


if __name__ == "__main__":
    print(json.dumps({t: services(t) for t in sys.argv[1:]}))
