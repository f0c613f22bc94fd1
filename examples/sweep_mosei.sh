#!/usr/bin/env bash
# Privacy-utility sweep on the CMU-MOSEI subset: train once, delete audio at each
# epsilon, verify every certificate, build a two-deletion chain (audio, then vision),
# and render the report (docs/privacy-utility.md records one run).
#
# Usage: examples/sweep_mosei.sh [WORK_DIR] [DATA_ROOT]
#   WORK_DIR   where checkpoints, certificates and the report go [default: ./sweep-mosei]
#   DATA_ROOT  folder holding cmu-mosei-subset/ [default: $MBD_CERT_DATA or ../shared/data]
# Environment: CLIP_NORMS (space-separated update clip norms, default "0.001 0.05"),
#   EPSILONS (default "0.25 0.5 1 2 4 8").
# The CMU-MOSEI data is distributed by its authors for non-commercial research only.
set -euo pipefail

work="${1:-./sweep-mosei}"
data="${2:-${MBD_CERT_DATA:-../shared/data}}"
clip_norms="${CLIP_NORMS:-0.001 0.05}"
epsilons="${EPSILONS:-0.25 0.5 1 2 4 8}"

if [ ! -d "$data/cmu-mosei-subset" ]; then
    echo "skipping: $data/cmu-mosei-subset not found" >&2
    exit 0
fi
mkdir -p "$work"
cd "$work"

[ -f issuer.key ] || mbd-cert keygen --out issuer
[ -f auditor.key ] || mbd-cert keygen --kind x25519 --out auditor
[ -d ck ] || mbd-cert train --corpus mosei-subset --data-root "$data" --seed 0 --out ck --no-progress

certs=()
for clip in $clip_norms; do
    for eps in $epsilons; do
        out="audio-clip${clip}-eps${eps}"
        mbd-cert issue --checkpoint ck --modality audio --epsilon "$eps" --clip-norm "$clip" \
            --key issuer.key --out "$out" --force
        mbd-cert verify "$out/cert.json" "$out/model.safetensors" --key issuer.pub \
            --bundle "$out" --json > "$out/verify.json"
        certs+=("$out/cert.json")
    done
done

# A chain of two deletions of the same model, the second sealed to the auditor.
mbd-cert issue --checkpoint ck --modality audio --epsilon 1 --key issuer.key --out chain1 --force
mbd-cert issue --checkpoint chain1 --modality vision --epsilon 1 --key issuer.key --out chain2 \
    --auditor-key auditor.pub --force
mbd-cert verify chain2/cert.json chain2/model.safetensors --key issuer.pub \
    --auditor-private-key auditor.key --json > chain2/verify.json

mbd-cert report --out report --force "${certs[@]}" chain2/cert.json \
    --verify-report chain2/verify.json --verify-report "${certs[0]%cert.json}verify.json"
echo "report: $work/report/index.html"
