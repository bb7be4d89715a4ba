#!/usr/bin/env bash
# The routing study at the seed report's scale (16 experts, top-4 training) on synthetic RVSD,
# end to end from `mofme synth`. Run from the repository root (about 1 h per model on 2 CPU cores):
#   bash scripts/routing_study.sh
# The linear-router run is the bundled video model's own recipe (configs/bundled_video.yaml);
# the uar run changes only the router (same data, steps, seed); ROUTERS="linear uar topp" adds a
# linear router trained with top-p 0.6.
set -euo pipefail
ROUTERS=${ROUTERS:-"linear uar"}
OUT=${OUT:-docs/results/routing16}
mkdir -p "$OUT"
[ -d data/rvsd2 ] || mofme synth rvsd --out data/rvsd2 --videos 64 --test-videos 6 --frames 12 \
  --size 128x160 --seed 7 --quiet
SWEEP=topk:1,topk:2,topk:4,topk:8,topp:0.4,topp:0.5,topp:0.6,topp:0.7,topp:0.8,dense
for r in $ROUTERS; do
  case $r in
    linear) extra=(--set out=runs/bundled_video) ;;
    uar) extra=(--set model.router=uar --set out=runs/study_uar) ;;
    topp) extra=(--set model.routing=topp:0.6 --set out=runs/study_topp) ;;
  esac
  run=$(printf '%s\n' "${extra[@]}" | sed -n 's/^out=//p' | tail -1)
  [ -f "$run/model_last.safetensors" ] || mofme train configs/bundled_video.yaml "${extra[@]}" --no-progress
  ckpt=$run/model_last.safetensors
  mofme test "$ckpt" --data data/rvsd2 --no-progress --input-baseline --precision fp32 \
    --routing "$SWEEP" --flops-size none --out "$OUT/sweep_$r.json" --plot "$OUT/sweep_$r.png" \
    --overwrite | tee "$OUT/sweep_$r.md"
  for routing in topk:4 topp:0.6; do
    tag=${routing/:/}
    mofme stats "$ckpt" --data data/rvsd2 --routing "$routing" --out "$OUT/stats_${r}_$tag" \
      --overwrite --no-progress
  done
done
# End to end: the experts' share of a 480x720 frame's time and FLOPs, and the frame time at
# top-4 vs top-p 0.6 vs dense: the bundled video model (trained routing), and the paper
# preset with 16 experts (random weights: top-4 vs dense only).
python scripts/expert_share.py video --size 480x720 --rounds 3 \
  --json "$OUT/expert_share_video.json" | tee "$OUT/expert_share_video.md"
python scripts/expert_share.py --preset paper --experts 16 --in-channels 6 --size 480x720 \
  --rounds 2 --routings topk:4,dense --json "$OUT/expert_share_paper.json" | tee "$OUT/expert_share_paper.md"
