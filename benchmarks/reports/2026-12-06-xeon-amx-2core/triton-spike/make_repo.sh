#!/bin/sh
# Assemble a Triton model repository from repo_template/ and the exported ONNX file.
# Usage: sh make_repo.sh OUT_DIR [max_queue_delay_us] [instance_count] [intra_op_threads]
set -e
cd "$(dirname "$0")"
out=$1; delay=${2:-1000}; count=${3:-1}; threads=${4:-2}
rm -rf "$out"
for m in unet_types null_labels; do
  mkdir -p "$out/$m/1"
  cp "repo_template/$m/model.py" "$out/$m/1/model.py"
  sed -e "s/max_queue_delay_microseconds: [0-9]*/max_queue_delay_microseconds: $delay/" \
      -e "s/count: [0-9]*/count: $count/" \
      -e "s/string_value: \"[0-9]*\"/string_value: \"$threads\"/" \
      "repo_template/$m/config.pbtxt" > "$out/$m/config.pbtxt"
done
cp artifacts/unet_types.onnx "$out/unet_types/1/model.onnx"
