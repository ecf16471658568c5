#!/usr/bin/env bash
# Rebuild the tiny preset's trained senses from nothing: toy-world data, the tiny ImageBind and
# the three tiny diffusion decoders, their export into anygpt/weights/tiny (float16, with this
# recipe in weights.json), and the held-out eval of the result.
#
#   scripts/train_tiny.sh [WORKDIR]        # default WORKDIR: data/tiny
#   PY=.venv/bin/python DEVICE=cuda scripts/train_tiny.sh /tmp/tiny
#
# EVAL=0 skips the final eval. Every step is seeded and resumable: re-running continues from
# the last checkpoints. The parts
# train side by side (encoder | VAE -> image | VAE -> video | audio), which suits one GPU; on a
# 2-core CPU the whole recipe takes hours (see README).
# On a CPU, give each of the parallel jobs its share of the cores (OMP_NUM_THREADS=1 each on 2
# cores): a 2-thread job beside a 1-thread one on 2 cores took 7-10x longer a step here.
set -euo pipefail
W=${1:-data/tiny}
PY=${PY:-python3}
DEVICE=${DEVICE:-auto}
EXTRA=${EXTRA:-}  # extra training flags, e.g. EXTRA="--max-steps 2" for a smoke run
CLI="$PY -m apps.cli"
DATA=$W/toy-train
RUNS=$W/runs
LOGS=${LOGS:-$W/logs}
mkdir -p "$RUNS" "$LOGS"

MAKE_DATA="anygpt toyworld $DATA --counts image=3000,audio=1500,video=1500,depth=800 --seed 0 --dialogs 4000 --two-outputs 0.4"
# The encoder's novel sounds (kinds the world lacks, at both lengths) keep it from reading a sound's
# length from its kind (README, "Sounds the world does not have").
ENC="anygpt train tiny-encoder --data $DATA/manifest.jsonl --out $RUNS/encoder --steps 800 --batch-size 32 --per-modality 1000 --novel-audio 1500 --seed 0"
# Then its depth tower alone, from the exported encoder, against its frozen text tower (README, "Its
# depth tower fine-tuned alone"): the other modalities' embeddings stay as they are.
ENC_DEPTH="anygpt train tiny-encoder --data $DATA/manifest.jsonl --out $RUNS/encoder-depth --init anygpt:tiny/encoder --modalities depth --steps 300 --batch-size 32 --per-modality 1000 --seed 0"
# Then its audio tower anew, on sounds padded with silence, told a sound's length only by the novel sounds
# (README, "A sound's length, taught only by sounds that come at both lengths"). The shipped first run
# predates silence padding (it padded as ImageBind's data.py does); this tower replaces its audio tower.
ENC_AUDIO="anygpt train tiny-encoder --data $DATA/manifest.jsonl --out $RUNS/encoder-audio --init anygpt:tiny/encoder --modalities audio --audio-pad silence --fresh-towers --length-from-novel --steps 800 --batch-size 32 --per-modality 1000 --novel-audio 1500 --seed 0"
VAE_STEPS=1500
# The image and video UNets condition on the frozen MiniLM and train on cached latents (README); from
# nothing the image run first trains the VAE (--init-vae none; the shipped image run reused the shipped
# VAE). The video UNet grows from the trained image decoder (its VAE and spatial layers, --video-init;
# the shipped video run started from the shipped image decoder, anygpt:tiny/image).
IMG="anygpt train tiny-decoders --data $DATA/manifest.jsonl --out $RUNS/decoders --parts image --init-vae none --vae-steps $VAE_STEPS --image-steps 900 --batch-size 64 --seed 0"
VID="anygpt train tiny-decoders --data $DATA/manifest.jsonl --out $RUNS/video --parts video --video-init $RUNS/decoders/image --video-steps 900 --video-batch-size 8 --seed 0"
AUD="anygpt train tiny-audio --data $DATA/manifest.jsonl --out $RUNS/audio --vae-steps 600 --unet-steps 2000 --batch-size 32 --seed 0"
# Then (README, "The audio path") zero-SNR fine-tunes of its UNet, its VAE decoder's loud-line fit, and
# a UNet fine-tune on 6000 more sounds of the training split. The shipped chain exported
# each step in float16 and started the next from that export (weights.json records it so); here each
# step starts from the folder of the step before.
ZSNR="anygpt train tiny-audio --parts unet --zero-snr --batch-size 32"
AUD_CHAIN=(
  "$AUD"
  "$ZSNR --data $DATA/manifest.jsonl --out $RUNS/audio-zsnr --init $RUNS/audio/audio --unet-steps 600 --unet-lr 5e-4 --seed 0"
  "$ZSNR --data $DATA/manifest.jsonl --out $RUNS/audio-zsnr3 --init $RUNS/audio-zsnr/audio --unet-steps 400 --unet-lr 3e-4 --seed 1"
  "anygpt train tiny-audio --data $DATA/manifest.jsonl --out $RUNS/audio-vaew --parts vae-decoder --init $RUNS/audio-zsnr3/audio --vae-decoder-steps 600 --vae-loud-weight 20 --batch-size 32 --seed 3"
  "$ZSNR --data $DATA/manifest.jsonl --out $RUNS/audio-zsnr4 --init $RUNS/audio-vaew/audio --unet-steps 800 --unet-lr 3e-4 --seed 2"
  "anygpt toyworld $W/toy-audio-7 --counts audio=6000 --seed 7"
  "$ZSNR --data $W/toy-audio-7/manifest.jsonl --out $RUNS/audio-more7 --init $RUNS/audio-zsnr4/audio --unet-steps 800 --unet-lr 3e-4 --seed 6"
)
AUD_LAST=$RUNS/audio-more7/audio

run() { # run "ANYGPT COMMAND" LOG: the recorded command, with this machine's python and device
  local cmd=$1 log=$2
  echo "+ $cmd" >"$log"
  ${cmd/anygpt /$CLI } ${3:+--device $DEVICE $EXTRA} >>"$log" 2>&1
}

train_and_export() { # PART TRAINED_FOLDER COMMAND: train, then ship the part (one export at a time)
  run "$3" "$LOGS/$1.log" dev && flock "$RUNS/.export.lock" $CLI train export-tiny "$1" --source "$2" \
    --data "$DATA" --command "$MAKE_DATA" --command "$3" >>"$LOGS/$1.log" 2>&1
}

train_encoder() { # the whole encoder, shipped; then its depth tower and its audio tower, each shipped in turn
  train_and_export encoder "$RUNS/encoder/encoder" "$ENC" && run "$ENC_DEPTH" "$LOGS/encoder-depth.log" dev &&
    flock "$RUNS/.export.lock" $CLI train export-tiny encoder --source "$RUNS/encoder-depth/encoder" --data "$DATA" \
      --command "$MAKE_DATA" --command "$ENC" --command "$ENC_DEPTH" >>"$LOGS/encoder-depth.log" 2>&1 &&
    run "$ENC_AUDIO" "$LOGS/encoder-audio.log" dev &&
    flock "$RUNS/.export.lock" $CLI train export-tiny encoder --source "$RUNS/encoder-audio/encoder" --data "$DATA" \
      --command "$MAKE_DATA" --command "$ENC" --command "$ENC_DEPTH" --command "$ENC_AUDIO" >>"$LOGS/encoder-audio.log" 2>&1
}

train_audio() { # each step of the chain in turn, then the last shipped with every command of it
  local recorded=() i=0 cmd
  for cmd in "${AUD_CHAIN[@]}"; do
    i=$((i + 1))
    if [[ $cmd == "anygpt toyworld "* ]]; then run "$cmd" "$LOGS/audio-$i.log"; else run "$cmd" "$LOGS/audio-$i.log" dev; fi || return 1
    recorded+=(--command "$cmd")
  done
  flock "$RUNS/.export.lock" $CLI train export-tiny audio --source "$AUD_LAST" --data "$DATA" \
    --command "$MAKE_DATA" "${recorded[@]}" >>"$LOGS/audio-$i.log" 2>&1
}

[ -f "$DATA/manifest.jsonl" ] || run "$MAKE_DATA" "$LOGS/data.log"

train_encoder & enc=$!
train_and_export image "$RUNS/decoders/image" "$IMG" & img=$!
train_audio & aud=$!
# The video decoder grows from the image decoder: start once that has been trained.
wait $img || { echo "training image failed: see $LOGS" >&2; exit 1; }
train_and_export video "$RUNS/video/video" "$VID" & vid=$!

status=0
for part in enc aud vid; do wait ${!part} || { echo "training $part failed: see $LOGS" >&2; status=1; }; done
[ "$status" = 0 ] || exit $status
[ "${EVAL:-1}" = 1 ] || exit 0
$CLI eval --preset tiny --part encoder --json | tee "$LOGS/eval-encoder.json"
$CLI eval --preset tiny --part decoders --json --grid "$LOGS/samples" | tee "$LOGS/eval-decoders.json"
