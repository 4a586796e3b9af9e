#!/bin/sh
# make_corpus.sh - (re)build the seed corpora in fuzz/corpus/<harness>/ from tests/fixtures and
# tiny files made here. Run from anywhere: fuzz/make_corpus.sh [path/to/moepack]. The seeds are
# committed; rerun only to change them. Needs python3 (standard library only) and h5import
# (hdf5-tools) for the non-int32 token files.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build/moepack}
C=$ROOT/fuzz/corpus
FX=$ROOT/tests/fixtures
rm -rf "$C"
mkdir -p "$C/safetensors" "$C/index" "$C/config" "$C/job" "$C/tokens" "$C/tokens_raw"

# config.json: the published configs and the transformers fixtures' configs
cp "$FX"/configs/*.json "$C/config/"
for m in mixtral_f32 qwen2_moe_f32 qwen3_moe_f32 olmoe_f32 deepseek_v2_f32; do
    cp "$FX/$m/config.json" "$C/config/fixture-$m.json"
done

# index.json: the sharded fixture's, and a minimal one
cp "$FX/olmoe_f32_sharded/model.safetensors.index.json" "$C/index/olmoe.json"
printf '{"metadata": {"total_size": 8}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}' >"$C/index/minimal.json"

# safetensors: the three smallest tensors of a fixture, and small hand-made files (FP8 with block
# scales, every float dtype, an empty tensor, metadata)
python3 - "$FX" "$C/safetensors" <<'PY'
import json, struct, sys
fx, out = sys.argv[1], sys.argv[2]

def write(path, tensors, meta=None):
    hdr, data = {}, b""
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, dtype, shape, raw in tensors:
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)

blob = open(fx + "/mixtral_f32/model.safetensors", "rb").read()
n = struct.unpack("<Q", blob[:8])[0]
hdr = json.loads(blob[8:8 + n])
small = sorted((v["data_offsets"][1] - v["data_offsets"][0], k) for k, v in hdr.items() if k != "__metadata__")[:3]
t = []
for _, k in small:
    v = hdr[k]
    b, e = v["data_offsets"]
    t.append((k, v["dtype"], v["shape"], blob[8 + n + b:8 + n + e]))
write(out + "/mixtral-norms.safetensors", t, {"format": "pt"})
write(out + "/fp8-scaled.safetensors",
      [("w.weight", "F8_E4M3", [130, 4], bytes(range(130 * 4 % 256)) * 2 + bytes(130 * 4 - 2 * (130 * 4 % 256))),
       ("w.weight_scale_inv", "F32", [2, 1], struct.pack("<2f", 0.5, 2.0))])
write(out + "/dtypes.safetensors",
      [("f16", "F16", [3], struct.pack("<3e", 1.0, -2.5, 65504.0)),
       ("bf16", "BF16", [2], b"\x80\x3f\x00\xc0"),
       ("f64", "F64", [1, 2], struct.pack("<2d", 1e-300, 3.0)),
       ("e5m2", "F8_E5M2", [2], b"\x3c\xfc"),
       ("ids", "I64", [2], struct.pack("<2q", 7, -1)),
       ("empty", "F32", [0, 4], b"")])
write(out + "/scalar.safetensors", [("s", "F32", [], struct.pack("<f", 1.5))])
PY

# job files
cp "$ROOT/jobs/demo.ini" "$C/job/demo.ini"
printf '[model]\npath = m\n[calibration]\ntokens = t.h5\nmin_tokens = 4\nmax_sequences = 2\n[checkpoint]\ndir = ck\n[output]\ndir = out\n' >"$C/job/all-paths.ini"
printf '[model]\npath = /abs/m\n[calibration]\ntokens = t.h5\n[delta]\nenabled = yes\nweights = fisher\nfisher = f.h5\nfraction = 0.25\nrank = 8\nlambda = 1e-4\nsolver = randomized\ntarget_ratio = 0.4\ncandidates = 0.1, 0.2,0.5\n' >"$C/job/delta.ini"
printf 'model.path=m\ncalibration.tokens=t.h5\ndelta.solver=lapack\n' >"$C/job/sets.txt"

# fuzz_tokens: parameter bytes (type, rank, layout, what, write mode, dims..., values...; see the harness)
python3 - "$C/tokens" <<'PY'
import sys
out = sys.argv[1]
vals = bytes(b for i in range(64) for b in (0, i * 7 % 256))
seeds = {
    "int32-2x4": bytes([12, 2, 0, 0, 1, 2, 4]) + vals,           # valid
    "int32-3x5-deflate": bytes([12, 2, 2, 0, 1, 3, 5]) + vals,   # valid, chunked + deflate
    "int32-4x1": bytes([12, 2, 0, 0, 1, 4, 1]) + vals,           # sequences of one token
    "float-2x4": bytes([6, 2, 0, 0, 1, 2, 4]) + vals,            # wrong type
    "int32-huge-unwritten": bytes([12, 2, 0x41, 0, 0, 0x9e, 0x8a]),  # [2^30, 2^10], nothing written
    "int32-unwritten": bytes([12, 2, 0x41, 0, 0, 0x90, 0x88]),       # [2^16, 2^8], nothing written
    "int32-1d": bytes([12, 1, 0, 0, 1, 8]) + vals,               # wrong rank
    "soft-link": bytes([12, 2, 0, 2, 1, 2, 4]) + vals,           # tokens -> /target
    "external-link": bytes([12, 2, 0, 3, 1, 2, 4]) + vals,
    "negative-ids": bytes([12, 2, 0, 0, 5, 2, 4]) + vals,
}
for k, v in seeds.items():
    open(f"{out}/{k}.bin", "wb").write(v)
PY

# fuzz_tokens_raw (not run by fuzz.sh): token files as bytes; int32 from moepack synth, plus other
# dtypes and ranks through h5import
T=$(mktemp -d)
"$BIN" synth --arch mixtral --out "$T/m" --layers 1 --experts 2 --hidden 8 --ffn 4 --vocab 16 --heads 2 \
    --kv-heads 1 --top-k 1 --n-seq 2 --seq-len 4 >/dev/null
cp "$T/m/tokens.h5" "$C/tokens_raw/int32-2x4.h5"
mk() { # name type size rank dims...
    name=$1 type=$2 size=$3 rank=$4
    shift 4
    echo "1 2 3 4 5 6" >"$T/in.txt"
    printf 'PATH tokens\nINPUT-CLASS TEXT%s\nOUTPUT-CLASS %s\nOUTPUT-SIZE %s\nRANK %s\nDIMENSION-SIZES %s\n' \
        "$([ "$type" = FP ] && echo FP || echo IN)" "$type" "$size" "$rank" "$*" >"$T/cfg.txt"
    h5import "$T/in.txt" -c "$T/cfg.txt" -o "$C/tokens_raw/$name.h5" >/dev/null
}
mk int64-2x3 IN 64 2 2 3
mk float-2x3 FP 32 2 2 3
mk int32-1d IN 32 1 6
mk int32-6x1 IN 32 2 6 1
rm -rf "$T"
du -sh "$C"/*
