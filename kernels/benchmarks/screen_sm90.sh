#!/bin/bash
# Writes benchmarks/sm90_compile_screen.jsonl: candidate tilings of each kernel compiled for sm_90 on any
# machine (no GPU needed), most promising first; tiling_sweep.py times the first few of each that passed
# (no problems: no spills, every dot on wgmma). Run from the repository root after changing a kernel:
#   bash kernels/benchmarks/screen_sm90.sh
set -eu
out=kernels/benchmarks/sm90_compile_screen.jsonl
screen() { python3 -m mmjax.kernels.compile_check --kernels="$1" --tilings="$2" --head_dims="$3" || true; }
{
  screen fwd 64x64w4s3,128x64w8s3,128x64w8s2,64x64w4s2,128x32w8s3,64x32w4s3 128
  screen dkdv_atomic 16x128w8s2,32x128w8s1,32x64w8s2,16x128w8s3,32x128w8s2,16x64w4s2 128
  screen dkdv 32x128w8s2,16x128w8s2,32x64w8s2,32x128w8s3,32x64w4s2 128
  screen dq 64x64w4s2,128x64w8s2,128x32w8s2,64x64w4s3,128x64w8s3 128
  screen fwd 64x64w4s3,128x64w8s3,128x128w8s2,128x128w8s3 64
  screen dkdv_atomic,dkdv 32x128w8s2,32x64w4s2,16x128w4s2,64x128w8s2 64
  screen dq 64x64w4s2,128x64w8s2,128x128w8s2,64x64w4s3 64
} > "$out.tmp" 2>/dev/null
mv "$out.tmp" "$out"
echo "$(grep -c '"problems": \[\]' "$out") of $(wc -l < "$out") passed -> $out"
