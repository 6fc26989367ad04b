#!/usr/bin/python3
"""Golden loss and gradients of stories260K-hf on window 0 of the calibration text.

What it computes
----------------
An independent float64 reference for mpq's hand-derived backward pass
(lib/model/llama_grad.h, checked by tests/test_grad_golden.cpp). Nothing here is shared
with the C++ code or with shared/data/reference_ppl.py: the safetensors file is parsed by
hand, the forward graph is written out below, and the gradient comes from torch autograd.

  tokens = ([bos=1] + SentencePiece(tokenizer.model).encode(text))[:256]
           text = shared/data/text/tinystories_valid_calib.txt (the HF LlamaTokenizer
           convention: add_bos_token true, no EOS)
  loss   = (1/255) * sum_{t=0..254} -log softmax(logits[t])[tokens[t+1]]
           (mean next-token cross-entropy of one window run from a fresh context)
  grad   = d loss / d param for every tensor of model.safetensors (47 tensors; there is
           no lm_head.weight because the LM head is tied to model.embed_tokens.weight,
           so the embedding gradient is the sum of the lookup and the LM-head parts).

All arithmetic is float64: the fp32 weights are widened exactly, then leaf tensors with
requires_grad are built from them and loss.backward() is called once.

Forward graph and the source of each formula (transformers' modeling_llama.py,
LlamaForCausalLM, read as the specification; config.json of the model for the numbers):
  h = embed[tokens]                                     LlamaModel.embed_tokens
  per layer l:
    n  = RMSNorm(h; input_layernorm)                    LlamaRMSNorm:
         RMSNorm(x; g) = x * rsqrt(mean(x^2, -1) + eps) * g, eps = rms_norm_eps = 1e-5
    q, k, v = n Wq^T, n Wk^T, n Wv^T                    LlamaAttention (no bias)
    RoPE (rotate-half, LlamaRotaryEmbedding / apply_rotary_pos_emb):
         inv_freq[i] = theta^(-2i/d), i < d/2, theta = rope_theta = 10000, d = head_dim = 8
         ang[p, j] = p * inv_freq[j mod d/2]          (cat(freqs, freqs))
         x' = x * cos(ang) + rotate_half(x) * sin(ang),  rotate_half(x) = cat(-x2, x1)
    GQA: query head hq reads KV head hq // (n_heads / n_kv_heads) = hq // 2   (repeat_kv)
    A  = softmax(q k^T / sqrt(d) + causal mask) v      eager_attention_forward
    a  = h + concat_heads(A) Wo^T
    m  = RMSNorm(a; post_attention_layernorm)
    h  = a + Wdown (silu(Wgate m) * Wup m)              LlamaMLP, silu(x) = x * sigmoid(x)
  logits = RMSNorm(h; model.norm) embed^T              tie_word_embeddings = true

Output (JSON, kept small)
-------------------------
  "comment": provenance, regeneration command, torch/numpy/sentencepiece versions
  "tokens":  the 256 ids;  "loss": float64
  "tensors": {HF name: {"shape", "max_abs" (max |grad| over the tensor), "l2" (Frobenius
             norm of the gradient), "indices" (flat row-major: 64 distinct indices drawn by
             numpy.random.RandomState(zlib.crc32(name)).choice(n, 64, replace=False),
             sorted, all indices when n <= 64, plus the argmax-|grad| index appended when
             not already present), "values" (the float64 gradient at those indices, written
             with repr(), i.e. the shortest string that round-trips the float64 exactly)}}

Regenerate (from the repository root; python3-torch, python3-numpy and
python3-sentencepiece from Debian apt for /usr/bin/python3):

  /usr/bin/python3 tests/golden/stories260k_grads.py --data ../shared/data \
      --out tests/golden/stories260k_grads_window0.json
"""

import argparse
import json
import math
import os
import struct
import sys
import zlib

import numpy as np
import sentencepiece
import torch

WINDOW = 256
N_SAMPLES = 64


def read_safetensors(path):
    """Hand parser: u64 LE header length, JSON header, raw little-endian F32 data."""
    with open(path, "rb") as f:
        blob = f.read()
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + hlen].decode("utf-8"))
    data = blob[8 + hlen :]
    tensors = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"{name}: dtype {info['dtype']}, expected F32")
        b, e = info["data_offsets"]
        n = int(np.prod(info["shape"])) if info["shape"] else 1
        if e - b != 4 * n:
            raise SystemExit(f"{name}: {e - b} bytes for shape {info['shape']}")
        arr = np.frombuffer(data[b:e], dtype="<f4").reshape(info["shape"])
        tensors[name] = arr.astype(np.float64)
        spans.append((b, e))
    # The data section must be covered exactly, without gaps or overlaps.
    spans.sort()
    pos = 0
    for b, e in spans:
        if b != pos:
            raise SystemExit(f"safetensors data not contiguous at byte {pos}")
        pos = e
    if pos != len(data):
        raise SystemExit(f"safetensors data section has {len(data) - pos} trailing bytes")
    return tensors


def expected_names(cfg):
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        for lin in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            names.append(p + lin + ".weight")
    if not cfg.get("tie_word_embeddings", False):
        names.append("lm_head.weight")
    return sorted(names)


def rms_norm(x, g, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward_loss(cfg, P, tokens):
    T = len(tokens)
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    d = cfg.get("head_dim", H // nh)
    eps = cfg["rms_norm_eps"]
    theta = cfg["rope_theta"]
    group = nh // nkv
    ids = torch.tensor(tokens, dtype=torch.long)

    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # [d/2]
    pos = torch.arange(T, dtype=torch.float64)
    freqs = torch.outer(pos, inv_freq)  # [T, d/2]
    ang = torch.cat((freqs, freqs), dim=-1)  # [T, d]
    cos, sin = torch.cos(ang), torch.sin(ang)
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)

    h = P["model.embed_tokens.weight"][ids]  # [T, H]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        n = rms_norm(h, P[p + "input_layernorm.weight"], eps)
        q = (n @ P[p + "self_attn.q_proj.weight"].T).view(T, nh, d).transpose(0, 1)   # [nh, T, d]
        k = (n @ P[p + "self_attn.k_proj.weight"].T).view(T, nkv, d).transpose(0, 1)  # [nkv, T, d]
        v = (n @ P[p + "self_attn.v_proj.weight"].T).view(T, nkv, d).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        kv_of = torch.tensor([hq // group for hq in range(nh)], dtype=torch.long)
        k = k[kv_of]  # [nh, T, d]
        v = v[kv_of]
        s = q @ k.transpose(1, 2) / math.sqrt(d) + mask
        a = torch.softmax(s, dim=-1) @ v  # [nh, T, d]
        a = a.transpose(0, 1).reshape(T, nh * d)
        h = h + a @ P[p + "self_attn.o_proj.weight"].T
        m = rms_norm(h, P[p + "post_attention_layernorm.weight"], eps)
        gate = m @ P[p + "mlp.gate_proj.weight"].T
        up = m @ P[p + "mlp.up_proj.weight"].T
        h = h + (torch.nn.functional.silu(gate) * up) @ P[p + "mlp.down_proj.weight"].T
    h = rms_norm(h, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else P["lm_head.weight"]
    logits = h @ head.T  # [T, V]
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp[torch.arange(T - 1), ids[1:]]
    return nll.mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data", help="the shared/data folder")
    ap.add_argument("--out", default="tests/golden/stories260k_grads_window0.json")
    args = ap.parse_args()

    model_dir = os.path.join(args.data, "models", "stories260K-hf")
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    raw = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    if sorted(raw) != expected_names(cfg):
        raise SystemExit("tensor names differ from the HF Llama set")

    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))
    with open(os.path.join(args.data, "text", "tinystories_valid_calib.txt"), encoding="utf-8") as f:
        text = f.read()
    ids = [sp.bos_id()] + sp.encode(text)
    if sp.bos_id() != 1:
        raise SystemExit(f"bos id {sp.bos_id()}, expected 1")
    tokens = [int(t) for t in ids[:WINDOW]]

    torch.set_default_dtype(torch.float64)
    P = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in raw.items()}
    loss = forward_loss(cfg, P, tokens)
    loss.backward()

    out_tensors = {}
    for name in sorted(P):
        g = P[name].grad.detach().numpy().astype(np.float64).reshape(-1)
        n = g.size
        if n <= N_SAMPLES:
            idx = list(range(n))
        else:
            rs = np.random.RandomState(zlib.crc32(name.encode("utf-8")))
            idx = sorted(int(i) for i in rs.choice(n, N_SAMPLES, replace=False))
        amax = int(np.argmax(np.abs(g)))
        if amax not in idx:
            idx.append(amax)
        out_tensors[name] = {
            "shape": list(P[name].shape),
            "max_abs": float(np.max(np.abs(g))),
            "l2": float(math.sqrt(float(np.sum(g * g)))),
            "indices": idx,
            "values": [float(g[i]) for i in idx],
        }

    comment = (
        "Golden float64 loss and gradient samples of stories260K-hf (shared/data/models/stories260K-hf) "
        "on window 0 = the first 256 ids ([bos=1] + sentencepiece encode) of "
        "shared/data/text/tinystories_valid_calib.txt; loss = mean next-token cross-entropy of the 255 "
        "predictions. Made by tests/golden/stories260k_grads.py: hand-parsed safetensors, HF Llama "
        "forward written out in float64 torch, gradients by torch autograd (loss.backward()). "
        "Regenerate from the repository root with: /usr/bin/python3 tests/golden/stories260k_grads.py "
        "--data ../shared/data --out tests/golden/stories260k_grads_window0.json. "
        f"torch {torch.__version__}, numpy {np.__version__}, sentencepiece {sentencepiece.__version__}, "
        f"python {sys.version.split()[0]}. Indices are flat row-major; values are float64 (repr, exact)."
    )
    # Hand-written layout: one line per list so the file stays small and diffable.
    # json.dumps writes floats with repr(), which round-trips float64 exactly.
    lines = ["{"]
    lines.append(f'  "comment": {json.dumps(comment)},')
    lines.append(f'  "window": 0,')
    lines.append(f'  "tokens": {json.dumps(tokens)},')
    lines.append(f'  "loss": {json.dumps(float(loss.item()))},')
    lines.append('  "tensors": {')
    names = list(out_tensors)
    for j, name in enumerate(names):
        e = out_tensors[name]
        lines.append(f"    {json.dumps(name)}: {{")
        lines.append(f'      "shape": {json.dumps(e["shape"])}, "max_abs": {json.dumps(e["max_abs"])}, '
                     f'"l2": {json.dumps(e["l2"])},')
        lines.append(f'      "indices": {json.dumps(e["indices"])},')
        lines.append(f'      "values": {json.dumps(e["values"])}')
        lines.append("    }" + ("," if j + 1 < len(names) else ""))
    lines.append("  }")
    lines.append("}")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"loss {loss.item():.17g}; {len(out_tensors)} tensors -> {args.out} "
          f"({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
