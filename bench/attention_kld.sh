#!/usr/bin/env bash
# What flash attention over an f16 cache changes in a model's answers, measured as
# llama.cpp measures a quantization: each token's distribution (KL divergence, the same
# top token, perplexity) against plain attention's, every token decoded as a one-token
# step, as a server decodes an answer. Two references beside it: plain attention reading
# the same text in prompt passes (llama.cpp's own kernels differing between a pass and a
# step) and a q8_0 cache with flash attention.
#
#   ./bench/build_peers.sh                     # once: builds llama-perplexity
#   ./bench/attention_kld.sh MODEL.gguf        # about 4 x 2 minutes for a 270M model here
#
# The text: 9,000 characters of docs/ARCHITECTURE.md, 8,000 of Python's argparse.py and
# README.md; two 2,048-token chunks of it are scored (their second halves, past 1,024
# cells).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: $0 MODEL.gguf}
bin=bench/.cache/llama.cpp-build/bin/llama-perplexity
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
argparse=$(.venv/bin/python -c "import argparse; print(argparse.__file__)")
{ head -c 9000 docs/ARCHITECTURE.md; head -c 9000 "$argparse" | tail -c 8000; cat README.md; } > "$work/text.txt"
common=(-m "$model" -f "$work/text.txt" -c 2048 --chunks 2 -t 2 --no-warmup)
"$bin" "${common[@]}" -b 1 -ub 1 -fa off --kl-divergence-base "$work/base" > "$work/base.log" 2>&1
grep "Final estimate" "$work/base.log" | sed 's/^.*Final/plain attention, one-token steps: final/'
run() {  # a name, then llama-perplexity's settings for it
    local name=$1; shift
    "$bin" "${common[@]}" "$@" --kl-divergence-base "$work/base" --kl-divergence \
        > "$work/run.log" 2>&1
    echo "== $name"
    grep -E "Mean PPL\(Q\) |Mean ln\(PPL|Mean    KLD|Same top p" "$work/run.log"
}
run "flash attention, one-token steps" -b 1 -ub 1 -fa on
run "plain attention, prompt passes of 512 rows" -b 2048 -ub 512 -fa off
run "q8_0 cache, flash attention, one-token steps" -b 1 -ub 1 -fa on -ctk q8_0 -ctv q8_0
