#!/usr/bin/python3
"""Fisher-pass throughput of a float32 Llama in Debian's python3-torch, for comparison with mpq.

The same work as mpq-sensitivity --kind fisher (calibration/sensitivity.cpp), batch 1:
for each window of L token ids
    zero the gradients (set to None),
    loss = mean next-token cross-entropy over the L-1 predictions,
    loss.backward()                      (gradients of every parameter, as mpq computes them),
    fisher[name] += grad**2              for the 7 linear weights of every layer (float32).
One warm-up window (the first one, not timed, not accumulated), then N timed windows.
fisher_sum is reported like mpq's: sum over the tensor of (accumulated squared gradient / N).
Tokens per second counts N * L tokens, as mpq does.

The model folder (config.json + model.safetensors, F32, HF names) is parsed by hand
(u64 LE header length, JSON header, raw little-endian data); the ids file is raw int32 LE.
rms_norm, rotate_half and expected_names come from tests/golden/stories260k_grads.py (they
are dtype-agnostic); the forward below is float32 throughout.

Run with /usr/bin/python3 (python3-torch 1.13, BLAS = the libblas.so.3 alternative).
"""

import argparse
import json
import math
import mmap
import os
import platform
import resource
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden"))
from stories260k_grads import expected_names, rms_norm, rotate_half  # noqa: E402

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
BLAS_LINK = "/usr/lib/x86_64-linux-gnu/libblas.so.3"


def read_safetensors_f32(path):
    """Hand parser (mmap, no copy of the whole file): returns {name: float32 torch tensor}."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    (hlen,) = struct.unpack("<Q", mm[:8])
    header = json.loads(mm[8 : 8 + hlen].decode("utf-8"))
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"{name}: dtype {info['dtype']}, expected F32")
        b, e = info["data_offsets"]
        n = int(np.prod(info["shape"])) if info["shape"] else 1
        if e - b != 4 * n:
            raise SystemExit(f"{name}: {e - b} bytes for shape {info['shape']}")
        arr = np.frombuffer(mm, dtype="<f4", count=n, offset=base + b).reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())  # own the memory, so the map can close
        del arr
    mm.close()
    return out


def openblas_info():
    """Core and build string of the OpenBLAS that torch loaded (through libblas.so.3), if any."""
    import ctypes
    for line in open("/proc/self/maps"):
        path = line.split()[-1]
        if "openblas" in os.path.basename(path):
            try:
                lib = ctypes.CDLL(path)
                lib.openblas_get_corename.restype = ctypes.c_char_p
                lib.openblas_get_config.restype = ctypes.c_char_p
                return {"library": path, "core": lib.openblas_get_corename().decode(),
                        "config": lib.openblas_get_config().decode().strip()}
            except (OSError, AttributeError):
                continue
    return None


def rope_tables(T, d, theta):
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    ang = torch.cat((freqs, freqs), dim=-1)
    return torch.cos(ang).float(), torch.sin(ang).float()


def forward_loss(cfg, P, ids, cos, sin, mask):
    """HF LlamaForCausalLM forward in float32; ids: LongTensor [T]. Returns the mean CE."""
    T = ids.shape[0]
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    d = cfg.get("head_dim") or H // nh
    eps = cfg["rms_norm_eps"]
    group = nh // nkv
    scale = 1.0 / math.sqrt(d)

    h = F.embedding(ids, P["model.embed_tokens.weight"])  # [T, H]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        n = rms_norm(h, P[p + "input_layernorm.weight"], eps)
        q = F.linear(n, P[p + "self_attn.q_proj.weight"]).view(T, nh, d).transpose(0, 1)    # [nh, T, d]
        k = F.linear(n, P[p + "self_attn.k_proj.weight"]).view(T, nkv, d).transpose(0, 1)   # [nkv, T, d]
        v = F.linear(n, P[p + "self_attn.v_proj.weight"]).view(T, nkv, d).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if group > 1:  # query head hq reads KV head hq // group (repeat_kv)
            k = k.repeat_interleave(group, dim=0)
            v = v.repeat_interleave(group, dim=0)
        s = torch.matmul(q, k.transpose(1, 2)) * scale + mask
        a = torch.matmul(torch.softmax(s, dim=-1), v)  # [nh, T, d]
        a = a.transpose(0, 1).reshape(T, nh * d)
        h = h + F.linear(a, P[p + "self_attn.o_proj.weight"])
        m = rms_norm(h, P[p + "post_attention_layernorm.weight"], eps)
        g = F.linear(m, P[p + "mlp.gate_proj.weight"])
        u = F.linear(m, P[p + "mlp.up_proj.weight"])
        h = h + F.linear(F.silu(g) * u, P[p + "mlp.down_proj.weight"])
    h = rms_norm(h, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else P["lm_head.weight"]
    logits = F.linear(h, head)  # [T, V]
    return F.cross_entropy(logits[:-1], ids[1:], reduction="mean")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF Llama folder: config.json + model.safetensors (F32)")
    ap.add_argument("--ids", required=True, help="token ids, raw int32 little-endian (.i32)")
    ap.add_argument("--windows", type=int, default=32, help="timed windows N")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per window L")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--sequential", action="store_true", help="windows at 0, L, 2L, ... (like mpq --sequential)")
    g.add_argument("--starts-file", help="one window start offset per line")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up windows (the first windows)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    blas = os.path.realpath(BLAS_LINK)
    print(f"torch {torch.__version__}; libblas.so.3 alternative: {BLAS_LINK} -> {blas}")
    print(torch.__config__.show().rstrip())
    torch.mm(torch.ones(8, 8), torch.ones(8, 8))  # make sure the BLAS is loaded
    ob = openblas_info()
    print(f"OpenBLAS: {ob}")
    print(f"torch threads {torch.get_num_threads()}")

    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    t_load = time.perf_counter()
    P = read_safetensors_f32(os.path.join(args.model, "model.safetensors"))
    if sorted(P) != expected_names(cfg):
        raise SystemExit("tensor names differ from the HF Llama set (biases are not supported here)")
    for t in P.values():
        t.requires_grad_(True)
    load_s = time.perf_counter() - t_load

    ids_all = np.fromfile(args.ids, dtype="<i4")
    L, N = args.seq_len, args.windows
    if args.sequential:
        starts = [i * L for i in range(N)]
    else:
        with open(args.starts_file) as f:
            starts = [int(x) for x in f.read().split()][:N]
        if len(starts) < N:
            raise SystemExit(f"{args.starts_file}: {len(starts)} starts, fewer than --windows {N}")
    for s in starts:
        if s < 0 or s + L > len(ids_all):
            raise SystemExit(f"window start {s} + {L} outside the {len(ids_all)} ids")
    V = cfg["vocab_size"]
    if ids_all.min() < 0 or ids_all.max() >= V:
        raise SystemExit(f"ids outside [0, {V})")
    windows = [torch.from_numpy(ids_all[s : s + L].astype(np.int64)) for s in starts]

    d = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    cos, sin = rope_tables(L, d, float(cfg.get("rope_theta", 10000.0)))
    mask = torch.full((L, L), float("-inf"), dtype=torch.float32).triu(1)

    lin_names = [f"model.layers.{l}.{x}.weight" for l in range(cfg["num_hidden_layers"]) for x in LINEARS]
    fisher = {n: torch.zeros_like(P[n], requires_grad=False) for n in lin_names}
    params = list(P.values())

    def step(ids, accumulate):
        for t in params:
            t.grad = None
        loss = forward_loss(cfg, P, ids, cos, sin, mask)
        loss.backward()
        if accumulate:
            with torch.no_grad():
                for n in lin_names:
                    gr = P[n].grad
                    fisher[n].addcmul_(gr, gr)
        return float(loss.detach())

    warm_losses = [step(windows[i % N], False) for i in range(args.warmup)]
    t0 = time.perf_counter()
    losses = [step(w, True) for w in windows]
    seconds = time.perf_counter() - t0
    tps = N * L / seconds

    with torch.no_grad():
        fisher_sums = {n: float(fisher[n].double().sum() / N) for n in lin_names}
    total = sum(fisher_sums.values())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB

    res = {
        "tool": "bench/torch_fisher.py",
        "model": os.path.abspath(args.model),
        "ids": os.path.abspath(args.ids),
        "windows": N,
        "seq_len": L,
        "tokens": N * L,
        "warmup_windows": args.warmup,
        "starts": starts,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "tokens_per_second": tps,
        "load_seconds": load_s,
        "peak_rss_mib": peak_mib,
        "mean_loss": sum(losses) / len(losses),
        "warmup_losses": warm_losses,
        "fisher_sum_total": total,
        "fisher_sum": fisher_sums,
        "torch_version": torch.__version__,
        "torch_config": torch.__config__.show(),
        "blas_alternative": {"link": BLAS_LINK, "target": blas},
        "openblas": ob,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    print(f"windows {N} x {L} tokens (+{args.warmup} warm-up); fisher pass {tps:.1f} tokens/s; "
          f"{seconds:.2f} s; peak RSS {peak_mib:.1f} MiB; mean loss {res['mean_loss']:.6f}; "
          f"fisher_sum total {total:.9g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
