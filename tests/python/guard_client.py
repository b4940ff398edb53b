#!/usr/bin/env python3
"""A Python client of inferenceguard.v1.GuardService (the public API),
generated from proto/ at run time: Info, Generate, and the GenerateStream
events. Prints a JSON summary.

    python3 -m pip install grpcio grpcio-tools
    python3 tests/python/guard_client.py --target 127.0.0.1:50050
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
    ap.add_argument("--target", required=True, help="host:port of an orchestrator")
    ap.add_argument("--prompt", default="Give me one tip for sleeping well.")
    args = ap.parse_args()
    require_grpc()

    with tempfile.TemporaryDirectory() as tmp:
        generate_stubs(pathlib.Path(tmp))
        sys.path.insert(0, tmp)
        import grpc
        from inferenceguard.v1 import guard_pb2, guard_pb2_grpc

        params = guard_pb2.SearchParams(samples_count=4, beam_width=2, chunk_tokens=8, max_new_tokens=16, seed=3)
        with grpc.insecure_channel(args.target) as channel:
            stub = guard_pb2_grpc.GuardServiceStub(channel)
            info = stub.Info(guard_pb2.GuardInfoRequest(), timeout=30)
            unary = stub.Generate(
                guard_pb2.GenerateRequest(prompt_text=args.prompt, method=guard_pb2.METHOD_INFERENCE_GUARD, params=params),
                timeout=300,
            ).result
            steps, result = [], None
            request = guard_pb2.GenerateStreamRequest(
                prompt_text=args.prompt, method=guard_pb2.METHOD_INFERENCE_GUARD, params=params
            )
            for msg in stub.GenerateStream(request, timeout=300):
                if msg.WhichOneof("event") == "step":
                    steps.append({"step": msg.step.step_index, "safe_fraction": msg.step.safe_fraction})
                else:
                    result = msg.result
            try:
                stub.Generate(guard_pb2.GenerateRequest(prompt_text=args.prompt, params=guard_pb2.SearchParams(chunk_tokens=0)), timeout=30)
                invalid = {"code": "OK"}
            except grpc.RpcError as e:
                invalid = {"code": e.code().name, "details": e.details()}
        print(
            json.dumps(
                {
                    "methods": len(info.methods),
                    "unary": {"text": unary.text, "safe": unary.safe, "cost": unary.cost, "reward": unary.reward, "method": guard_pb2.Method.Name(unary.method)},
                    "stream_steps": steps,
                    "stream_result": {"token_ids": list(result.token_ids), "step_count": result.step_count} if result else None,
                    "unary_token_ids": list(unary.token_ids),
                    "invalid_request": invalid,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
