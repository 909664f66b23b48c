#!/bin/sh
# Train the demo model from scratch on the GPUs in TRAIN_GPUS (default: all of them):
# the video VAE data-parallel on all but the last GPU while the audio VAE and then the
# vocoder train on the last, then the transformer and connectors data-parallel on all, then
# fast mode's latent upsampler and distilled transformer, then the export to RUN_DIR/export.
#
#   sh gpu_runner/demo/train.sh RUN_DIR [VIDEO_VAE_S AUDIO_VAE_S VOCODER_S TRANSFORMER_S UPSAMPLER_S DISTILL_S]
#
# Everything is checkpointed in RUN_DIR, so running the script again with the same RUN_DIR
# trains on from where each stage stopped.
set -eu
run=${1:?usage: train.sh RUN_DIR [VIDEO_VAE_S AUDIO_VAE_S VOCODER_S TRANSFORMER_S UPSAMPLER_S DISTILL_S]}
video_s=${2:-280}
audio_s=${3:-110}
vocoder_s=${4:-140}
transformer_s=${5:-160}
upsampler_s=${6:-45}
distill_s=${7:-120}
gpus=${TRAIN_GPUS:-$(python3 -c 'import torch; print(",".join(map(str, range(torch.cuda.device_count()))))')}
[ -n "$gpus" ] || { echo "train.sh needs a CUDA GPU" >&2; exit 1; }
mkdir -p "$run"

stage() {  # stage DEVICES NAME SECONDS [OPTION...]: one process per GPU in DEVICES
  devices=$1 name=$2 seconds=$3
  shift 3
  count=$(echo "$devices" | tr ',' '\n' | wc -l)
  CUDA_VISIBLE_DEVICES=$devices python3 -m torch.distributed.run --standalone --nproc-per-node="$count" \
    -m gpu_runner.demo.train "$name" --run-dir "$run" --seconds "$seconds" "$@"
}

last=${gpus##*,}
if [ "$last" = "$gpus" ]; then  # one GPU: the stages take turns
  stage "$gpus" video_vae "$video_s"
  stage "$gpus" audio_vae "$audio_s"
  stage "$gpus" vocoder "$vocoder_s"
else
  stage "${gpus%,*}" video_vae "$video_s" > "$run/video_vae.out" 2>&1 &
  video=$!
  { stage "$last" audio_vae "$audio_s" && stage "$last" vocoder "$vocoder_s"; } > "$run/audio.out" 2>&1
  wait "$video"
fi
stage "$gpus" transformer "$transformer_s" --pool "${TRAIN_POOL:-2560}"  # clips per shape encoded up front
stage "$gpus" latent_upsampler "$upsampler_s"
stage "$gpus" distill "$distill_s"  # the teacher's paths first (not counted in DISTILL_S)
python3 -m gpu_runner.demo.train export --run-dir "$run" --target "$run/export"
