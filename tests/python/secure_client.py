#!/usr/bin/env python3
"""A Python grpcio client of a secured orchestrator: TLS verified against a CA, bearer
tokens (none, a wrong one, the right one), and server reflection v1alpha (the only version
grpcio-reflection speaks) listing the services. Prints a JSON summary.

    python3 -m pip install grpcio grpcio-tools grpcio-reflection
    python3 tests/python/secure_client.py --target localhost:50050 --ca ca.crt --token TOKEN
"""
import argparse
import json
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from policy_client import generate_stubs, require_grpc  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="host:port of an orchestrator serving TLS")
    ap.add_argument("--ca", required=True, help="PEM CA that signed its certificate")
    ap.add_argument("--token", required=True, help="a bearer token of its --auth-tokens")
    args = ap.parse_args()
    require_grpc()

    with tempfile.TemporaryDirectory() as tmp:
        generate_stubs(pathlib.Path(tmp))
        sys.path.insert(0, tmp)
        import grpc
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
        from inferenceguard.v1 import guard_pb2, guard_pb2_grpc

        credentials = grpc.ssl_channel_credentials(root_certificates=pathlib.Path(args.ca).read_bytes())
        with grpc.secure_channel(args.target, credentials) as channel:
            stub = guard_pb2_grpc.GuardServiceStub(channel)
            calls = {}
            for label, metadata in [
                ("none", ()),
                ("wrong", (("authorization", "Bearer not-the-token-0123456789"),)),
                ("right", (("authorization", f"Bearer {args.token}"),)),
            ]:
                try:
                    models = stub.ListModels(guard_pb2.ListModelsRequest(), metadata=metadata, timeout=30).models
                    calls[label] = {"code": "OK", "models": len(models)}
                except grpc.RpcError as e:
                    calls[label] = {"code": e.code().name}
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30)
            services = sorted(s.name for r in replies for s in r.list_services_response.service)
        print(json.dumps({"calls": calls, "reflection_v1alpha": services}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
