#!/bin/sh
# Train the demo model from scratch: the two VAEs and the vocoder side by side (one GPU each),
# then the transformer and connectors data-parallel over every GPU, then the export.
#
#   sh gpu_runner/demo/train.sh RUN_DIR [COMPONENT_SECONDS] [TRANSFORMER_SECONDS]
#
# With 4 H100s the defaults take about 10 minutes. Everything is checkpointed in RUN_DIR,
# so running the script again with the same RUN_DIR trains on from where it stopped.
set -eu
run=${1:?usage: train.sh RUN_DIR [COMPONENT_SECONDS] [TRANSFORMER_SECONDS]}
component_s=${2:-200}
transformer_s=${3:-330}
gpus=$(python3 -c 'import torch; print(torch.cuda.device_count())')
[ "$gpus" -ge 1 ] || { echo "train.sh needs a CUDA GPU" >&2; exit 1; }

pids=""
index=0
for stage in video_vae audio_vae vocoder; do
  python3 -m gpu_runner.demo.train "$stage" --run-dir "$run" --seconds "$component_s" \
    --device "cuda:$((index % gpus))" > "$run.$stage.out" 2>&1 &
  index=$((index + 1))
  if [ "$gpus" -ge 3 ]; then pids="$pids $!"; else wait $!; fi  # with fewer GPUs they take turns
done
for pid in $pids; do wait "$pid"; done
python3 -m torch.distributed.run --standalone --nproc-per-node="$gpus" -m gpu_runner.demo.train transformer \
  --run-dir "$run" --seconds "$transformer_s"
python3 -m gpu_runner.demo.train export --run-dir "$run" --target "$run/export"
