#!/bin/bash
# Neural Cleanse's own seed spread: re-run NC (tools/eval.py, STRIP and spectral off) on the bench's
# Fashion-MNIST victims with other Global.seed values (NC's image draws and batches follow it).
#   bash bench/backdoor_nc_seeds.sh [output dir of bench/backdoor_results.py] > bench/results/backdoor_nc_seeds.txt
# Prints "seed attack victim nc_anomaly" per line; the victims' training reports are untouched
# (tools/eval.py writes <run>/eval_report_test/).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-output/backdoor_bench}
for seed in 1 2 3; do for attack in badnets blend; do for victim in plain lsba; do
  extra=(); [ "$victim" = lsba ] && extra=(-o Backdoor.lsba.enabled=true)
  python tools/eval.py -c "configs/lsba_${attack}_fmnist.yaml" --no-progress -o "Global.output_dir=$runs" \
    -o "Global.run_name=${attack}_fmnist_$victim" "${extra[@]}" -o "Global.seed=$seed" \
    -o Backdoor.detectors.strip=false -o Backdoor.detectors.spectral=false >/dev/null 2>&1
  python -c "import json,sys; r=json.load(open(sys.argv[1])); print($seed, '$attack', '$victim', round(r['nc_anomaly'], 3))" \
    "$runs/${attack}_fmnist_$victim/eval_report_test/backdoor_report.json"
done; done; done
