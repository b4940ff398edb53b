#!/usr/bin/env python3
"""A Python client of inferenceguard.v1.PolicyService, generated from proto/.

Shows that the API is usable from another language: stubs are generated with
grpcio-tools at run time, then the script calls Info, RenderChat and the
streaming ExtendChunk, and prints a JSON summary.

    python3 -m pip install grpcio grpcio-tools
    python3 tests/python/policy_client.py --target 127.0.0.1:50051
"""
import argparse
import json
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"


def require_grpc() -> None:
    """Exits with the install command when grpcio or grpcio-tools is missing."""
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401
    except ImportError as e:
        sys.exit(f"missing Python package ({e.name}): python3 -m pip install grpcio grpcio-tools")


def generate_stubs(out: pathlib.Path) -> None:
    from grpc_tools import protoc  # imported here so a missing package gets a clear message

    files = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "inferenceguard" / "v1").glob("*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="host:port of a policy server")
    ap.add_argument("--children", type=int, default=3)
    ap.add_argument("--chunk-tokens", type=int, default=6)
    args = ap.parse_args()
    require_grpc()

    with tempfile.TemporaryDirectory() as tmp:
        generate_stubs(pathlib.Path(tmp))
        sys.path.insert(0, tmp)
        import grpc
        from inferenceguard.v1 import common_pb2, policy_pb2, policy_pb2_grpc

        with grpc.insecure_channel(args.target) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            info = stub.Info(policy_pb2.PolicyInfoRequest(), timeout=30)
            chat = stub.RenderChat(
                policy_pb2.RenderChatRequest(
                    messages=[common_pb2.ChatMessage(role="user", content="Say hello in French.")],
                    add_generation_prompt=True,
                ),
                timeout=30,
            )
            request = policy_pb2.ExtendChunkRequest(
                prefixes=[policy_pb2.PrefixToExtend(token_ids=list(chat.token_ids), children_count=args.children)],
                chunk_tokens=args.chunk_tokens,
                sampling=policy_pb2.SamplingParams(temperature=0.8, seed=3),
            )
            candidates, stats = [], None
            for msg in stub.ExtendChunk(request, timeout=120):
                candidates.extend(msg.candidates)
                if msg.HasField("stats"):
                    stats = msg.stats
            try:
                stub.ExtendChunk(policy_pb2.ExtendChunkRequest(chunk_tokens=4), timeout=30).next()
                invalid = None
            except grpc.RpcError as e:
                invalid = {"code": e.code().name, "details": e.details()}

    summary = {
        "model_id": info.model_id,
        "vocab_size": info.vocab_size,
        "latent_dim": info.latent_dim,
        "prompt_tokens": len(chat.token_ids),
        "candidates": [
            {
                "child_index": c.child_index,
                "tokens": len(c.token_ids),
                "latent_dim": len(c.latent.values),
                "finish_reason": common_pb2.FinishReason.Name(c.finish_reason),
                "text": c.text,
            }
            for c in sorted(candidates, key=lambda c: c.child_index)
        ],
        "generated_tokens": stats.generated_tokens if stats else None,
        "invalid_request": invalid,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
