#!/usr/bin/env python3
"""Seed corpora for the mpq fuzz targets, generated at fuzz time from the real files in
../shared/data (nothing of them is committed): python3 make_seeds.py DATA OUT [EXTRA...]

DATA is the shared data folder (models/stories260K-hf, text/, reference/); OUT gets one
folder per target. EXTRA are files written by scripts/fuzz.sh with the mpq tools on
stories260K just before (a sensitivity file, a plan, packed checkpoints); each goes to the
targets that read its kind. Input forms follow the targets' comments (tests/fuzz/*.cpp):
a leading mode byte, and for the safetensors readers a header-only form
[3-byte data size][header JSON].
"""
import json
import os
import struct
import sys


def safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = f.read(n)
        f.seek(0, 2)
        data_bytes = f.tell() - 8 - n
    return header, data_bytes


def header_only(header, data_bytes):
    return bytes([0]) + min(data_bytes, (4 << 20) - 1).to_bytes(3, "little") + header


def shrunk_file(header):
    """The same tensors (names, dtypes, metadata) with every dimension cut to at most 3 and
    the offsets recomputed: a small valid file with the real file's structure."""
    from functools import reduce
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "U8": 1, "I8": 1,
             "I16": 2, "I32": 4, "I64": 8}
    h = json.loads(header)
    out, off = {}, 0
    for name, e in h.items():
        if name == "__metadata__":
            out[name] = e
            continue
        shape = [min(d, 3) for d in e["shape"]]
        n = reduce(lambda a, b: a * b, shape, 1) * sizes[e["dtype"]]
        out[name] = {"dtype": e["dtype"], "shape": shape, "data_offsets": [off, off + n]}
        off += n
    text = json.dumps(out, separators=(",", ":")).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    return text, off


def write(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    data, out = sys.argv[1], sys.argv[2]
    extra = sys.argv[3:]
    model = os.path.join(data, "models", "stories260K-hf")
    st = os.path.join(model, "model.safetensors")
    if os.path.exists(st):
        header, data_bytes = safetensors_header(st)
        write(out, "fuzz_safetensors", "stories260k-header", header_only(header, data_bytes))
        small, small_bytes = shrunk_file(header)
        raw = struct.pack("<Q", len(small)) + small + bytes((i * 7) % 61 for i in range(small_bytes))
        write(out, "fuzz_safetensors", "stories260k-shrunk-raw", bytes([1]) + raw)
        write(out, "fuzz_safetensors", "stories260k-shrunk-header", header_only(small, small_bytes))
        names = [k for k in json.loads(header) if k != "__metadata__"]
        half = len(names) // 2
        wm = {n: ("a.safetensors" if i < half else "b.safetensors") for i, n in enumerate(names)}
        write(out, "fuzz_safetensors_index", "stories260k-names",
              json.dumps({"metadata": {"total_size": data_bytes}, "weight_map": wm}, indent=2).encode())
    write(out, "fuzz_safetensors_index", "valid", json.dumps({"metadata": {"total_size": 48}, "weight_map": {
        "model.embed_tokens.weight": "a.safetensors", "model.norm.weight": "a.safetensors",
        "model.layers.0.input_layernorm.weight": "b.safetensors",
        "model.layers.0.self_attn.q_proj.weight": "b.safetensors"}}, indent=2).encode())
    for sub in ("stories260K-hf", "stories260K"):
        cfg = os.path.join(data, "models", sub, "config.json")
        if os.path.exists(cfg):
            text = open(cfg, "rb").read()
            write(out, "fuzz_config", sub, text)
            j = json.loads(text)
            if sub == "stories260K-hf":  # the same model with the optional fields exercised
                j.update({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
                          "attention_bias": False, "sliding_window": 128, "eos_token_id": [2, 3]})
                write(out, "fuzz_config", sub + "-llama3-rope", json.dumps(j, indent=2).encode())
    tok = os.path.join(model, "tokenizer.model")
    if os.path.exists(tok):
        write(out, "fuzz_tokenizer", "stories260k-tokenizer.model", bytes([0]) + open(tok, "rb").read())
    tcfg = os.path.join(model, "tokenizer_config.json")
    if os.path.exists(tcfg):
        write(out, "fuzz_tokenizer", "stories260k-tokenizer_config", bytes([1]) + open(tcfg, "rb").read())
    params = bytes([0]) + struct.pack("<iH", 4, 16) + bytes([30])  # mode, --samples, --seq-len, --ctx - 2
    for name in ("stories260K_tinystories_eval_tokens_20480.i32", "stories260K_wikitext2_test_tokens_20480.i32"):
        p = os.path.join(data, "reference", name)
        if os.path.exists(p):
            write(out, "fuzz_tokens", name[:-4] + "-1k", bytes([1]) + params[1:] + open(p, "rb").read()[:1024])
            write(out, "fuzz_tokens", name[:-4] + "-1k-sequential", bytes([3]) + params[1:] + open(p, "rb").read()[:1024])
    for name in ("tinystories_valid_eval.txt", "wikitext2_test_joined.txt"):
        p = os.path.join(data, "text", name)
        if os.path.exists(p):
            write(out, "fuzz_tokens", name[:-4] + "-2k", params + open(p, "rb").read()[:2048])
    for p in extra:
        base = os.path.basename(p)
        if p.endswith(".json"):
            write(out, "fuzz_plan", base, open(p, "rb").read())
        elif p.endswith(".safetensors"):
            header, data_bytes = safetensors_header(p)
            target = "fuzz_sensitivity" if "sens" in base else "fuzz_safetensors"
            write(out, target, base + "-header", header_only(header, data_bytes))
            if os.path.getsize(p) < 64 << 10:
                write(out, target, base + "-raw", bytes([1]) + open(p, "rb").read())


if __name__ == "__main__":
    main()
