#!/usr/bin/env bash
# Build the TensorRT engine with trtexec, for users of NVIDIA's TensorRT container
# (e.g. `docker run --gpus all -v "$PWD":/work -w /work nvcr.io/nvidia/tensorrt:<tag>-py3`).
# Same profile as configs/trt/default.yaml. Usage: scripts/build_trt.sh [fp16|fp32|bf16|int8] [size]
set -euo pipefail
cd "$(dirname "$0")/.."
precision=${1:-fp16}
size=${2:-128}
onnx=models/model.onnx
flags=()
case "$precision" in
  fp16) flags+=(--fp16) ;;
  bf16) flags+=(--bf16) ;;
  int8) onnx=models/model.int8.onnx; flags+=(--int8) ;;  # QDQ model: explicit quantisation
  fp32) ;;
  *) echo "precision must be fp16, fp32, bf16 or int8" >&2; exit 2 ;;
esac
mkdir -p models/trt
trtexec --onnx="$onnx" --saveEngine=models/trt/model.plan \
  --minShapes=images:1x${size}x${size}x3 --optShapes=images:32x${size}x${size}x3 \
  --maxShapes=images:64x${size}x${size}x3 --memPoolSize=workspace:2048M \
  --timingCacheFile=models/trt_timing.cache "${flags[@]}"
echo "engine written to models/trt/model.plan"
