#!/usr/bin/env bash
# Train on the bundled synthetic corpus, delete audio at epsilon 1, verify the result.
# Outputs go to runs/quickstart/ (ignored by git). Takes about 20 s on 2 CPU cores.
# keygen --force replaces the issuer key of an earlier run in the same folder.
set -euo pipefail
out=${1:-runs/quickstart}
mkdir -p "$out"

mbd-cert keygen --out "$out/issuer" --force
mbd-cert train --corpus synthetic --seed 0 --out "$out/checkpoint" --force
mbd-cert evaluate --checkpoint "$out/checkpoint" --json "$out/metrics.json"
mbd-cert issue --checkpoint "$out/checkpoint" --modality audio \
    --epsilon 1 --delta 1e-5 --key "$out/issuer.key" --out "$out/deleted" --force
mbd-cert verify "$out/deleted/cert.json" "$out/deleted/model.safetensors" \
    --key "$out/issuer.pub" --bundle "$out/deleted" --max-epsilon 1
