#!/usr/bin/env bash
# Quick start command 1: installs what is missing, then runs the main job on
# sample data made from scikit-learn's handwritten digits: build TFRecords,
# train a float MobileNet V1 0.25@64 from scratch, evaluate it, fine-tune it
# quantization-aware, evaluate that, export both release bundles and
# evaluate the TFLite models themselves, beside the post-training int8 model
# of the same float checkpoint (the baseline that quantization-aware training
# must beat).
# Safe to re-run: finished steps are skipped or resumed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools/setup.sh

WORK="${MOBILENET_V1_DEMO_DIR:-$PWD/work/demo}"
DATA="$WORK/sample_digits"
MODEL=(--depth_multiplier=0.25 --image_size=64 --num_classes=11)
TRAIN=(--batch_size=32 --optimizer=momentum --batch_norm_decay=0.99
       --log_every_n_steps=250 --save_interval_secs=30)

step() { printf '\n== %s\n' "$*"; }

bazel build -c opt --noshow_progress //:build_imagenet_tfrecords \
  //:mobilenet_v1_train //:mobilenet_v1_eval //:mobilenet_v1_export \
  //:mobilenet_v1_tflite_eval

step "Sample data: handwritten digits as RGB JPEG TFRecords in $DATA"
./bazel-bin/build_imagenet_tfrecords --sample_digits --output_dir="$DATA"

step "Float training from scratch (0.25@64, 2000 steps)"
./bazel-bin/mobilenet_v1_train --dataset_dir="$DATA" \
  --checkpoint_dir="$WORK/float" "${MODEL[@]}" "${TRAIN[@]}" \
  --learning_rate=0.05 --number_of_steps=2000

step "Float evaluation on the held-out validation split"
./bazel-bin/mobilenet_v1_eval --dataset_dir="$DATA" \
  --checkpoint_dir="$WORK/float" "${MODEL[@]}" | tee "$WORK/float_eval.txt"

step "Quantization-aware fine-tuning from the float checkpoint (300 steps)"
./bazel-bin/mobilenet_v1_train --dataset_dir="$DATA" \
  --checkpoint_dir="$WORK/quant" "${MODEL[@]}" "${TRAIN[@]}" \
  --quantize=True --fine_tune_checkpoint="$WORK/float" \
  --learning_rate=0.001 --number_of_steps=300

step "Quantized evaluation"
./bazel-bin/mobilenet_v1_eval --dataset_dir="$DATA" \
  --checkpoint_dir="$WORK/quant" "${MODEL[@]}" --quantize=True \
  | tee "$WORK/quant_eval.txt"

step "Release bundles in $WORK/bundle"
./bazel-bin/mobilenet_v1_export --checkpoint_dir="$WORK/float" \
  --output_dir="$WORK/bundle" "${MODEL[@]}" \
  --post_training=int8 --dataset_dir="$DATA"
./bazel-bin/mobilenet_v1_export --checkpoint_dir="$WORK/quant" \
  --output_dir="$WORK/bundle" "${MODEL[@]}" --quantize=True

step "TFLite models on the validation split"
# The int8 twin is exported when the quantized model has symmetric weight
# ranges (a quantized checkpoint from before they were the default has none).
for name in mobilenet_v1_0.25_64 mobilenet_v1_0.25_64_ptq_int8 \
    mobilenet_v1_0.25_64_quant mobilenet_v1_0.25_64_quant_int8; do
  [[ -f "$WORK/bundle/$name.tflite" ]] || continue
  ./bazel-bin/mobilenet_v1_tflite_eval --dataset_dir="$DATA" \
    --tflite_path="$WORK/bundle/$name.tflite" | tee "$WORK/${name}_tflite_eval.txt"
done

figures() { grep -o 'Accuracy.*Recall_5 [0-9.]*' "$1"; }
size() { stat -c %s "$WORK/bundle/$1.tflite"; }
step "Summary (validation split, $(grep -o 'on [0-9]* examples' "$WORK/float_eval.txt"))"
printf '  float              TF    : %s\n' "$(figures "$WORK/float_eval.txt")"
printf '  float              TFLite: %s  (%s bytes)\n' \
  "$(figures "$WORK/mobilenet_v1_0.25_64_tflite_eval.txt")" "$(size mobilenet_v1_0.25_64)"
printf '  post-training int8 TFLite: %s  (%s bytes, int8 in/out)\n' \
  "$(figures "$WORK/mobilenet_v1_0.25_64_ptq_int8_tflite_eval.txt")" \
  "$(size mobilenet_v1_0.25_64_ptq_int8)"
printf '  quantization-aware TF    : %s\n' "$(figures "$WORK/quant_eval.txt")"
# Per-channel models (the default) are int8 inside; a per-tensor one is
# uint8 throughout, with an int8 twin.
kind="per-channel int8 inside, uint8 in/out"
[[ -f "$WORK/bundle/mobilenet_v1_0.25_64_quant_int8.tflite" ]] && kind="uint8"
printf '  quantization-aware TFLite: %s  (%s bytes, %s)\n' \
  "$(figures "$WORK/mobilenet_v1_0.25_64_quant_tflite_eval.txt")" \
  "$(size mobilenet_v1_0.25_64_quant)" "$kind"
if [[ -f "$WORK/bundle/mobilenet_v1_0.25_64_quant_int8.tflite" ]]; then
  printf '  quantization-aware TFLite: %s  (%s bytes, int8 inside, uint8 in/out)\n' \
    "$(figures "$WORK/mobilenet_v1_0.25_64_quant_int8_tflite_eval.txt")" \
    "$(size mobilenet_v1_0.25_64_quant_int8)"
fi
