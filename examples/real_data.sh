#!/usr/bin/env bash
# Train on a real CMU corpus, delete audio at epsilon 1, delta 1e-5, and verify.
#
#   bash examples/real_data.sh mosei-subset [DATA_ROOT] [OUT]
#   bash examples/real_data.sh ict-mmmo     [DATA_ROOT] [OUT]
#
# DATA_ROOT contains the corpus folders (default: $MBD_CERT_DATA, else ../shared/data
# beside the checkout, as mbd-cert train finds it). Runs from any directory of the
# checkout, or from anywhere with DATA_ROOT.
# The CMU datasets are distributed by their authors for non-commercial research only.
# Prints the utility table (all modalities, audio missing before deletion, after
# deletion) that docs/real-data.md records.
set -euo pipefail
corpus=${1:?usage: real_data.sh mosei-subset|ict-mmmo [DATA_ROOT] [OUT]}
root=${2:-${MBD_CERT_DATA:-}}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${3:-runs/$corpus}
seed=${SEED:-0}
mkdir -p "$out"

case "$corpus" in
  # 645 training rows of 768-d text: a narrower, more regularised model with light
  # auxiliary losses generalises better than the defaults.
  mosei-subset) train_options=(--task-loss mse --patience 25 --learning-rate 0.001
      --hidden-dim 32 --weight-decay 0.05 --dropout 0.3 --similarity-weight 0.01
      --orthogonality-weight 0.01 --preservation-weight 0.1
      --probe-members 139 --probe-nonmembers 139) ;;
  ict-mmmo) train_options=(--probe-members 80 --probe-nonmembers 80) ;;
  *) echo "unknown corpus $corpus" >&2; exit 2 ;;
esac

mbd-cert keygen --out "$out/issuer" --force
# Without a DATA_ROOT, train applies its own default.
root_option=()
if [ -n "$root" ]; then root_option=(--data-root "$root"); fi
mbd-cert train --corpus "$corpus" "${root_option[@]}" --seed "$seed" --out "$out/checkpoint" \
    --force --no-progress "${train_options[@]}"
mbd-cert issue --checkpoint "$out/checkpoint" --modality audio --epsilon 1 --delta 1e-5 \
    --key "$out/issuer.key" --out "$out/deleted" --force
mbd-cert verify "$out/deleted/cert.json" "$out/deleted/model.safetensors" \
    --key "$out/issuer.pub" --bundle "$out/deleted" --max-epsilon 1
python "$here/utility_table.py" "$out/deleted/cert.json"
