#!/usr/bin/env python3
"""The llama.cpp peer of `inferenceguard bench policy`.

The same workload as our policy bench, on the same GGUF: for each batch size
B, one prefill of B prompts of P tokens (each its own sequence), then D decode
steps of B rows, logits for every decoded row. Prints one JSON object per
line, one per batch size, with the median of `--runs` runs after one warm-up.

Runs inside the scratch venv that `benches/llamacpp_peer.sh` builds; it is not
a dependency of the project.
"""

import argparse
import json
import statistics
import sys
import time

import llama_cpp as lc


def fill(batch, entries):
    """entries: (token, position, sequence, wants_logits)."""
    batch.n_tokens = len(entries)
    for i, (tok, pos, seq, logits) in enumerate(entries):
        batch.token[i] = tok
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = 1 if logits else 0


def decode(ctx, batch):
    rc = lc.llama_decode(ctx, batch)
    if rc != 0:
        sys.exit(f"llama_decode failed with {rc}")


def one_run(model, rows, prompt, steps, threads):
    params = lc.llama_context_default_params()
    # One KV stream per sequence (kv_unified off): llama.cpp's advice for
    # sequences that share no prefix; a unified buffer makes every row attend
    # over all rows' positions (masked), quadratic in the batch.
    per_seq = -(-(len(prompt) + steps) // 256) * 256
    params.n_ctx = rows * per_seq
    params.n_batch = max(rows * len(prompt), rows)
    params.n_ubatch = min(512, params.n_batch)
    params.n_seq_max = rows
    params.kv_unified = False
    params.n_threads = threads
    params.n_threads_batch = threads
    ctx = lc.llama_init_from_model(model, params)
    if not ctx:
        sys.exit("llama_init_from_model failed")
    batch = lc.llama_batch_init(params.n_batch, 0, 1)
    try:
        p = len(prompt)
        fill(batch, [(t, i, r, i == p - 1) for r in range(rows) for i, t in enumerate(prompt)])
        t0 = time.perf_counter()
        decode(ctx, batch)
        prefill = time.perf_counter() - t0
        t1 = time.perf_counter()
        for step in range(steps):
            # The same token ids as our bench: vary per row and step.
            fill(batch, [((100 + r * 7 + step * 13) % 10_000 + 100, p + step, r, True) for r in range(rows)])
            decode(ctx, batch)
        return prefill, time.perf_counter() - t1
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    lc.llama_backend_init()
    mparams = lc.llama_model_default_params()
    model = lc.llama_model_load_from_file(args.model.encode(), mparams)
    if not model:
        sys.exit(f"{args.model}: llama.cpp could not load it")
    prompt = [200 + (i * 37) % 5000 for i in range(args.prompt_tokens)]
    for rows in [int(b) for b in args.batches.split(",") if b]:
        pre, dec = [], []
        for run in range(args.runs + 1):
            p, d = one_run(model, rows, prompt, args.decode_steps, args.threads)
            if run > 0:
                pre.append(p)
                dec.append(d)
        p, d = statistics.median(pre), statistics.median(dec)
        print(json.dumps({
            "engine": f"llama.cpp (llama-cpp-python {lc.__version__})",
            "system_info": lc.llama_print_system_info().decode().strip(),
            "batch": rows,
            "prefill_tokens_per_s": rows * args.prompt_tokens / p,
            "decode_tokens_per_s": rows * args.decode_steps / d,
            "ms_per_step": d * 1e3 / args.decode_steps,
        }), flush=True)
    lc.llama_model_free(model)


if __name__ == "__main__":
    main()
