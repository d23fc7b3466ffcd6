#!/usr/bin/env bash
# Quick start command 1: installs what is missing, then runs the main job on
# sample data made from scikit-learn's handwritten digits: build TFRecords,
# train a float MobileNet V1 0.25@64 from scratch, evaluate it, fine-tune it
# quantization-aware, evaluate that, and export both release bundles.
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
  //:mobilenet_v1_train //:mobilenet_v1_eval

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
  --learning_rate=0.005 --number_of_steps=300

step "Quantized evaluation"
./bazel-bin/mobilenet_v1_eval --dataset_dir="$DATA" \
  --checkpoint_dir="$WORK/quant" "${MODEL[@]}" --quantize=True \
  | tee "$WORK/quant_eval.txt"

step "Summary (validation split, $(grep -o 'on [0-9]* examples' "$WORK/float_eval.txt"))"
printf '  float    : %s\n' "$(grep -o 'Accuracy.*Recall_5 [0-9.]*' "$WORK/float_eval.txt")"
printf '  quantized: %s\n' "$(grep -o 'Accuracy.*Recall_5 [0-9.]*' "$WORK/quant_eval.txt")"
