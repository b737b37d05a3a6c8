#!/bin/bash
# Seconds per update of equal weighting against the surgery methods (EXPERIMENTS.md, "Cost of the
# surgery methods"): MiniLM, 3 tasks per micro-batch, 12 updates each, the trainer's own clock.
# Run alone on the machine: scripts/multitask_timing.sh (needs target/release/prism).
cd "$(dirname "$0")/.."
for m in equal pcgrad cagrad mgda; do
  sed -e 's/^steps = 100/steps = 12/' -e "s#runs/all3_$m#/tmp/timing_$m#" examples/multitask/all3_$m.toml > /tmp/timing_$m.toml
  rm -rf /tmp/timing_$m
  ./target/release/prism train --config /tmp/timing_$m.toml --quiet > /dev/null 2>&1
  python3 -c "
import json
rows=[json.loads(l) for l in open('/tmp/timing_$m/metrics.jsonl') if 'elapsed_s' in l]
e={r['step']:r['elapsed_s'] for r in rows}
print('$m', 'first', round(e[1],2), 's; updates 2-12:', round((e[12]-e[1])/11,3), 's/update')
"
done
