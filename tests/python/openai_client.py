#!/usr/bin/env python3
"""The official OpenAI Python SDK against the orchestrator's OpenAI-compatible API: a chat
completion (twice, same seed), the same streamed, one with the guard's own parameters
(extra_body), a raw completion and the model list. Prints a JSON summary.

    python3 -m pip install openai
    python3 tests/python/openai_client.py --base-url http://127.0.0.1:8080/v1 --model policy
"""
import argparse
import json
import ssl

import openai


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", default="Give me one tip for sleeping well.")
    ap.add_argument("--api-key", default="not-needed-without-tokens", help="the orchestrator's bearer token, when it has --auth-tokens")
    ap.add_argument("--ca", help="PEM CA that verifies an https:// base URL's certificate")
    ap.add_argument("--quick", action="store_true", help="one chat completion and a wrong key only (the transport's test)")
    args = ap.parse_args()

    http_client = None
    if args.ca:
        http_client = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=args.ca))
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=600, http_client=http_client)
    if args.quick:
        messages = [{"role": "user", "content": args.prompt}]
        reply = client.chat.completions.create(model=args.model, messages=messages, max_tokens=4, seed=5, extra_body={"inferenceguard": {"method": "base"}})
        wrong = openai.OpenAI(base_url=args.base_url, api_key="a-wrong-token-0123456789", max_retries=0, timeout=60, http_client=http_client)
        try:
            wrong.models.list()
            wrong_key = "accepted"
        except openai.AuthenticationError as e:
            wrong_key = f"refused {e.status_code}"
        print(json.dumps({"text": reply.choices[0].message.content, "object": reply.object, "wrong_key": wrong_key}))
        return 0
    messages = [{"role": "user", "content": args.prompt}]
    guard = {"inferenceguard": {"samples_count": 4, "beam_width": 2, "chunk_tokens": 8}}
    first = client.chat.completions.create(model=args.model, messages=messages, max_tokens=16, seed=5, extra_body=guard)
    again = client.chat.completions.create(model=args.model, messages=messages, max_tokens=16, seed=5, extra_body=guard)
    streamed, finish = [], None
    for chunk in client.chat.completions.create(model=args.model, messages=messages, max_tokens=16, seed=5, extra_body=guard, stream=True):
        if chunk.choices:
            streamed.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    base = client.chat.completions.create(
        model=args.model, messages=messages, max_tokens=8, seed=1, extra_body={"inferenceguard": {"method": "base"}}
    )
    raw = client.completions.create(model=args.model, prompt="The capital of France is", max_tokens=4, seed=2)
    models = client.models.list()
    print(
        json.dumps(
            {
                "text": first.choices[0].message.content,
                "object": first.object,
                "finish_reason": first.choices[0].finish_reason,
                "usage": {"prompt": first.usage.prompt_tokens, "completion": first.usage.completion_tokens, "total": first.usage.total_tokens},
                "guard": first.model_extra["inferenceguard"],
                "again_text": again.choices[0].message.content,
                "streamed_text": "".join(streamed),
                "streamed_finish": finish,
                "base_method": base.model_extra["inferenceguard"]["method"],
                "completion_object": raw.object,
                "completion_text": raw.choices[0].text,
                "models": [m.id for m in models.data],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
