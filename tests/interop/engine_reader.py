#!/usr/bin/env python3
"""Independent reader of engine-export checkpoints (python3 + numpy only, no torch, no mpq code).

Written from the serving engines' loading rules, not from mpq's documentation:
  vLLM vllm/model_executor/layers/quantization/modelopt.py (ModelOptFp8LinearMethod,
    ModelOptFp8PcPtLinearMethod, ModelOptNvFp4LinearMethod, ModelOptNvFp4W4A16LinearMethod,
    ModelOptMixedPrecisionConfig), .../utils/w8a8_utils.py requantize_with_max_scale,
    .../utils/quant_utils.py is_layer_skipped, compressed_tensors/compressed_tensors.py and the
    schemes CompressedTensorsW4A4Fp4 / W4A16Fp4 / W8A8Fp8 / W8A16Fp8, vllm/config/model.py
    _verify_quantization ("Unknown quantization method");
  compressed-tensors quant_args.py (QuantizationArgs, extra="forbid"), fp4_quantized.py
    (pack_fp4_to_uint8: even element in the low nibble), converters/modelopt_nvfp4.py
    (weight_global_scale = 1 / weight_scale_2).

What it does: reads config.json and the safetensors files, applies the engine's rules (fused
q/k/v -> qkv_proj and gate/up -> gate_up_proj share ONE global scale: the max of the shards'
weight_scale_2 for NVFP4, the max weight_scale with requantization for static FP8; the tensor set
each declared scheme needs, nothing more; in_features % 16 for NVFP4; ignore lists) and writes
the weights the engine would compute with as a dense F32 folder. If the checkpoint declares
activation quantization, the dense folder keeps a minimal ModelOpt-form quantization_config
declaring it and the static input scales in ModelOpt's meaning (input_scale, the dequantization
multiplier), so that an evaluator can apply the same activation scheme.

Usage: engine_reader.py CHECKPOINT_DIR OUT_DIR        exit 0 on success;
       exit 3 with one line "engine_reader: error: ..." when an engine would refuse or misload.
"""
import json
import os
import re
import shutil
import struct
import sys

import numpy as np

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
FUSED = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["mlp.gate_proj", "mlp.up_proj"]]
TOKENIZER_FILES = ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                   "generation_config.json"]


class Refused(Exception):
    pass


# ---- element codecs ---------------------------------------------------------------------------
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float64)


def e4m3_table():
    """float value of every E4M3 (fn) byte: bias 7, no infinities, NaN at 0x7F / 0xFF."""
    t = np.zeros(256, dtype=np.float64)
    for b in range(256):
        s, e, m = b >> 7, (b >> 3) & 0xF, b & 7
        if e == 15 and m == 7:
            v = np.nan
        elif e == 0:
            v = m / 8.0 * 2.0 ** -6
        else:
            v = (1 + m / 8.0) * 2.0 ** (e - 7)
        t[b] = -v if s else v
    return t


E4M3 = e4m3_table()
E4M3_POS = E4M3[:127]  # codes 0..126: 0 .. 448 ascending


def to_e4m3(x):
    """Round to nearest E4M3, ties to even code, saturating at +-448 (torch's .to(float8_e4m3fn)
    after vLLM's clamp in scaled_fp8_quant). Returns float64 values."""
    a = np.minimum(np.abs(x), 448.0)
    hi = np.clip(np.searchsorted(E4M3_POS, a, side="left"), 0, 126)
    lo = np.maximum(hi - 1, 0)
    dl, dh = a - E4M3_POS[lo], E4M3_POS[hi] - a
    pick = np.where(dl < dh, lo, np.where(dh < dl, hi, np.where(lo % 2 == 0, lo, hi)))
    return np.sign(x) * E4M3_POS[pick]


# ---- safetensors ------------------------------------------------------------------------------
DT = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "U8": "u1", "I8": "i1", "I16": "<i2", "I32": "<i4",
      "I64": "<i8", "F8_E4M3": "u1", "F8_E5M2": "u1"}


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, en = e["data_offsets"]
        arr = np.frombuffer(blob[base + b:base + en], dtype=DT[e["dtype"]]).reshape(e["shape"])
        out[name] = (e["dtype"], arr)
    return out


def load_tensors(folder):
    idx = os.path.join(folder, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    t = {}
    for f in files:
        t.update(read_safetensors(os.path.join(folder, f)))
    return t


def as_f64(dtype, arr):
    if dtype == "F32" or dtype == "F16":
        return arr.astype(np.float64)
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if dtype == "F8_E4M3":
        return E4M3[arr]
    raise Refused(f"dtype {dtype} where a float is expected")


def write_safetensors(path, tensors):
    header, chunks, off = {}, [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [off, off + len(data)]}
        chunks.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for c in chunks:
            f.write(c)


# ---- the engine rules -------------------------------------------------------------------------
def listed(lst, module, substring):
    """vLLM's ignore matching: "re:" regex (re.match), the exact name, and for ModelOpt also a
    substring of the module name (ModelOptQuantConfigBase.is_layer_excluded)."""
    for e in lst or []:
        if e.startswith("re:"):
            if re.match(e[3:], module):
                return True
        elif e == module or (substring and e in module):
            return True
    return False


CT_ARG_KEYS = {"num_bits", "type", "symmetric", "group_size", "strategy", "block_structure", "dynamic",
               "actorder", "observer", "observer_kwargs"}


def ct_check_args(where, a):
    if a is None:
        return
    extra = set(a) - CT_ARG_KEYS
    if extra:
        raise Refused(f"{where}: keys {sorted(extra)} not accepted by compressed-tensors QuantizationArgs (extra=forbid)")
    if a.get("group_size") and a.get("strategy") not in ("group", "tensor_group"):
        raise Refused(f"{where}: group_size needs strategy group/tensor_group (compressed-tensors validator)")


class Scheme:
    """What the engine expects for one linear: kind in {nvfp4, fp8}, act in {none, static, dynamic}."""

    def __init__(self, kind, act, naming):
        self.kind, self.act, self.naming = kind, act, naming

    def tensors(self, module, rows):
        """{suffix: (allowed dtypes, shape)} the engine's create_weights registers."""
        if self.kind == "nvfp4":
            if self.naming == "modelopt":
                t = {"weight": ({"U8"}, None), "weight_scale": ({"F8_E4M3"}, None), "weight_scale_2": ({"F32"}, "scalar")}
                if self.act == "static":
                    t["input_scale"] = ({"F32"}, "scalar")
            else:
                t = {"weight_packed": ({"U8"}, None), "weight_scale": ({"F8_E4M3"}, None),
                     "weight_global_scale": ({"F32"}, "scalar")}
                if self.act == "static":
                    t["input_global_scale"] = ({"F32"}, "scalar")
            return t
        t = {"weight": ({"F8_E4M3"}, None)}
        if self.naming == "modelopt":
            t["weight_scale"] = ({"F32"}, [rows] if self.act == "dynamic" else "scalar")
        else:
            t["weight_scale"] = ({"F32", "BF16", "F16"}, [rows, 1] if self.act == "dynamic" else "scalar_or_channel")
        if self.act == "static":
            t["input_scale"] = ({"F32", "BF16", "F16"}, "scalar")
        return t


def modelopt_schemes(qc, modules):
    if "exclude_modules" in qc and "ignore" not in qc:
        raise Refused("config.json quantization_config: vLLM reads 'ignore' there (exclude_modules is the "
                      "hf_quant_config.json key), so the excluded modules would be loaded as quantized")
    algo = qc.get("quant_algo")
    ignore = qc.get("ignore", [])
    known = {"FP8", "FP8_PER_CHANNEL_PER_TOKEN", "NVFP4", "W4A16_NVFP4", "MIXED_PRECISION"}
    if algo not in known:
        raise Refused(f"ModelOpt quant_algo {algo!r}: vLLM supports {sorted(known)} here")
    per = {"NVFP4": ("nvfp4", "static"), "W4A16_NVFP4": ("nvfp4", "none"), "FP8": ("fp8", "static"),
           "FP8_PER_CHANNEL_PER_TOKEN": ("fp8", "dynamic")}
    out = {}
    for m in modules:
        if listed(ignore, m, True):
            out[m] = None
            continue
        a = algo
        if algo == "MIXED_PRECISION":
            ent = qc.get("quantized_layers", {}).get(m)
            if ent is None:
                out[m] = None  # vLLM: not in quantized_layers -> unquantized
                continue
            a = ent.get("quant_algo")
            if a not in per:
                raise Refused(f"MIXED_PRECISION entry {m}: quant_algo {a!r} is not FP8/NVFP4/W4A16_NVFP4")
        out[m] = Scheme(*per[a], "modelopt")
    return out


def ct_schemes(qc, modules):
    allowed_top = {"quant_method", "format", "quantization_status", "config_groups", "ignore", "kv_cache_scheme",
                   "sparsity_config", "transform_config", "global_compression_ratio", "version"}
    extra = set(qc) - allowed_top
    if extra:
        raise Refused(f"compressed-tensors QuantizationConfig: unknown keys {sorted(extra)}")
    ignore = qc.get("ignore", [])
    out = {}
    for m in modules:
        if listed(ignore, m, False):
            out[m] = None
            continue
        scheme = None
        for gname, g in qc.get("config_groups", {}).items():
            targets = g.get("targets", [])
            if not ("Linear" in targets or listed([t for t in targets if t != "Linear"], m, False)):
                continue
            w, a = g.get("weights"), g.get("input_activations")
            ct_check_args(f"config_groups.{gname}.weights", w)
            ct_check_args(f"config_groups.{gname}.input_activations", a)
            fmt = g.get("format", qc.get("format"))
            if w.get("type") == "float" and w.get("num_bits") == 4:
                if w.get("strategy") != "tensor_group" or w.get("group_size") != 16:
                    raise Refused(f"config_groups.{gname}: NVFP4 weights need strategy tensor_group, group_size 16")
                if fmt != "nvfp4-pack-quantized":
                    raise Refused(f"config_groups.{gname}: NVFP4 weights need format nvfp4-pack-quantized, not {fmt!r}")
                scheme = Scheme("nvfp4", "none" if a is None else "static", "ct")
            elif w.get("type") == "float" and w.get("num_bits") == 8:
                if fmt != "float-quantized":
                    raise Refused(f"config_groups.{gname}: FP8 weights need format float-quantized, not {fmt!r}")
                act = "none" if a is None else ("dynamic" if a.get("dynamic") is True else "static")
                if act == "dynamic" and w.get("strategy") != "channel":
                    raise Refused(f"config_groups.{gname}: dynamic FP8 expects channel weight scales here")
                scheme = Scheme("fp8", act, "ct")
            else:
                raise Refused(f"config_groups.{gname}: no compressed-tensors scheme for weights {w}")
            break
        out[m] = scheme
    return out


def dequant_nvfp4(packed, scale, rows, cols):
    if packed.shape != (rows, cols // 2) or scale.shape != (rows, cols // 16):
        raise Refused(f"NVFP4 shapes {packed.shape} / {scale.shape} for [{rows}, {cols}]")
    codes = np.empty((rows, cols), dtype=np.uint8)
    codes[:, 0::2] = packed & 0x0F  # even element in the low nibble
    codes[:, 1::2] = packed >> 4
    bs = np.repeat(E4M3[scale], 16, axis=1)
    return E2M1[codes] * bs


def main(src, dst):
    cfg = json.load(open(os.path.join(src, "config.json")))
    qc = cfg.get("quantization_config")
    method = (qc or {}).get("quant_method")
    if method is not None and not str(method).startswith("modelopt") and method != "compressed-tensors":
        raise Refused(f"vLLM: Unknown quantization method: {method}")
    L = cfg["num_hidden_layers"]
    H = cfg["hidden_size"]
    I = cfg["intermediate_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim", H // nh)
    shapes = {"self_attn.q_proj": (nh * hd, H), "self_attn.k_proj": (nkv * hd, H), "self_attn.v_proj": (nkv * hd, H),
              "self_attn.o_proj": (H, nh * hd), "mlp.gate_proj": (I, H), "mlp.up_proj": (I, H),
              "mlp.down_proj": (H, I)}
    modules = [f"model.layers.{l}.{n}" for l in range(L) for n in LINEARS]
    tensors = load_tensors(src)
    schemes = {m: None for m in modules}
    if method == "compressed-tensors":
        schemes = ct_schemes(qc, modules)
    elif method is not None:
        schemes = modelopt_schemes(qc, modules)

    # The tensor set of every module: exactly what its scheme registers (extras raise KeyError in
    # vLLM's load_weights; a missing scale stays uninitialized).
    used = set()
    for m in modules:
        rows, cols = shapes[m.split(".", 3)[3]]
        sc = schemes[m]
        own = {k[len(m) + 1:] for k in tensors if k.startswith(m + ".")}
        if sc is None:
            need = {"weight"} | ({"bias"} & own)
            if tensors.get(m + ".weight", ("", None))[0] not in ("F32", "F16", "BF16"):
                raise Refused(f"{m}: unquantized in the config but its weight is not a dense float")
        else:
            if sc.kind == "nvfp4" and cols % 16:
                raise Refused(f"{m}: in features {cols} not a multiple of 16 (vLLM NVFP4 create_weights)")
            spec = sc.tensors(m, rows)
            need = set(spec) | ({"bias"} & own)
            for suf, (dts, shp) in spec.items():
                if suf not in own:
                    raise Refused(f"{m}.{suf} missing: vLLM would leave it uninitialized")
                dt, arr = tensors[m + "." + suf]
                if dt not in dts:
                    raise Refused(f"{m}.{suf}: dtype {dt}, the engine expects {sorted(dts)}")
                if shp == "scalar" and arr.size != 1:
                    raise Refused(f"{m}.{suf}: shape {list(arr.shape)}, expected a scalar")
                if shp == "scalar_or_channel" and not (arr.size == 1 or list(arr.shape) == [rows, 1]):
                    raise Refused(f"{m}.{suf}: shape {list(arr.shape)}, expected [1] or [{rows}, 1]")
                if isinstance(shp, list) and list(arr.shape) != shp:
                    raise Refused(f"{m}.{suf}: shape {list(arr.shape)}, expected {shp}")
        extra = own - need
        if extra:
            raise Refused(f"{m}: tensors {sorted(extra)} unknown to the engine (KeyError in load_weights)")
        used |= {m + "." + s for s in own}

    # Fused layers: every shard the same scheme, or all ignored (vLLM is_layer_skipped /
    # _match_fused_layer); then the shared scales the engine computes with.
    dense, in_scales = {}, {}
    groups = []
    for l in range(L):
        for g in FUSED:
            groups.append([f"model.layers.{l}.{n}" for n in g])
    for m in modules:
        if not any(m in g for g in groups):
            groups.append([m])
    for g in groups:
        kinds = {(schemes[m].kind, schemes[m].act) if schemes[m] else None for m in g}
        if len(kinds) != 1:
            raise Refused(f"{g}: shards of one fused layer with different schemes {sorted(map(str, kinds))}")
        sc = schemes[g[0]]
        if sc is None:
            for m in g:
                dense[m + ".weight"] = as_f64(*tensors[m + ".weight"])
            continue
        shp = {m: shapes[m.split(".", 3)[3]] for m in g}
        if sc.kind == "nvfp4":
            if sc.naming == "modelopt":
                gsc = max(float(tensors[m + ".weight_scale_2"][1].reshape(-1)[0]) for m in g)  # .max() over shards
                glob = np.float32(gsc)
            else:  # global scale stored as a divisor: the engine divides by the max over shards
                gmax = max(float(tensors[m + ".weight_global_scale"][1].reshape(-1)[0]) for m in g)
                glob = np.float32(1.0) / np.float32(gmax)
            for m in g:
                rows, cols = shp[m]
                dense[m + ".weight"] = dequant_nvfp4(tensors[m + ".weight" + ("" if sc.naming == "modelopt" else "_packed")][1],
                                                     tensors[m + ".weight_scale"][1], rows, cols) * float(glob)
            if sc.act == "static":
                if sc.naming == "modelopt":
                    s = max(float(tensors[m + ".input_scale"][1].reshape(-1)[0]) for m in g)
                else:
                    s = 1.0 / max(float(tensors[m + ".input_global_scale"][1].reshape(-1)[0]) for m in g)
                for m in g:
                    in_scales[m] = ("nvfp4", s)
        else:
            scales = {m: as_f64(*tensors[m + ".weight_scale"]).reshape(-1) for m in g}
            q = {m: E4M3[tensors[m + ".weight"][1]] for m in g}
            per_channel = any(scales[m].size > 1 for m in g)
            if per_channel:
                for m in g:
                    dense[m + ".weight"] = q[m] * scales[m].reshape(-1, 1)
            else:
                smax = max(float(scales[m][0]) for m in g)
                for m in g:
                    deq = q[m] * float(scales[m][0])
                    if sc.act == "static" and float(scales[m][0]) != smax:  # requantize_with_max_scale
                        deq = to_e4m3(deq / smax) * smax
                    dense[m + ".weight"] = deq
            if sc.act == "static":
                s = max(float(as_f64(*tensors[m + ".input_scale"]).reshape(-1)[0]) for m in g)
                for m in g:
                    in_scales[m] = ("fp8", s)
            elif sc.act == "dynamic":
                for m in g:
                    in_scales[m] = ("fp8-dynamic", None)

    # Everything else is copied (as F32).
    out = {}
    for name, (dt, arr) in tensors.items():
        if name in used:
            continue
        out[name] = as_f64(dt, arr).astype(np.float32)
    for name, w in dense.items():
        out[name] = w.astype(np.float32)
    dense_cfg = {k: v for k, v in cfg.items() if k != "quantization_config"}
    if in_scales:  # declare the engine's activation scheme for the evaluator, ModelOpt's flat form
        layers = {}
        for m, (kind, s) in in_scales.items():
            layers[m] = {"quant_algo": {"nvfp4": "NVFP4", "fp8": "FP8", "fp8-dynamic": "FP8_PER_CHANNEL_PER_TOKEN"}[kind]}
            if s is not None:
                out[m + ".input_scale"] = np.array(s, dtype=np.float32)
        dense_cfg["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "MIXED_PRECISION",
                                            "quantized_layers": layers, "ignore": ["lm_head"],
                                            "producer": {"name": "engine_reader.py (dense reference)"}}
    os.makedirs(dst, exist_ok=True)
    write_safetensors(os.path.join(dst, "model.safetensors"), out)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(dense_cfg, f, indent=2)
    for t in TOKENIZER_FILES:
        if os.path.exists(os.path.join(src, t)):
            shutil.copy(os.path.join(src, t), os.path.join(dst, t))
    print(f"engine_reader: {src}: {method or 'dense'}; {sum(1 for m in modules if schemes[m])} quantized linears, "
          f"{len(in_scales)} with activation quantization -> {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-3], file=sys.stderr)
        sys.exit(2)
    try:
        main(sys.argv[1], sys.argv[2])
    except Refused as e:
        print(f"engine_reader: error: {sys.argv[1]}: {e}", file=sys.stderr)
        sys.exit(3)
