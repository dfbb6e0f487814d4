# Run by hand on 2026-12-02: /work/base is 6596ebb in a second worktree with its own venv, /work/main this checkout.
#!/bin/bash
# Alternating before (6596ebb, /work/base) and now (/work/main) on a quiet machine.
cd /tmp
for i in 1 2 3 4; do for arm in base main; do
  /work/$arm/.venv/bin/python /work/$arm/benchmarks/gemini_throughput.py overhead --records 4000 --concurrency 4 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print('overhead', '$arm', $i, d['plain_loop_records_per_s'], d['qsync_records_per_s'], d['speedup'], flush=True)"
done; done
for i in 1 2 3; do for arm in base main; do
  /work/$arm/.venv/bin/python /work/main/benchmarks/inprocess_hashing.py $arm 2>&1 | tail -1 | sed 's/^/inprocess /'
done; done
for i in 1 2; do for arm in base main; do
  /work/$arm/.venv/bin/python /work/$arm/benchmarks/gemini_throughput.py loop --records 4000 --concurrency 4 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print('loop300', '$arm', $i, {k: v for k, v in d.items() if 'per_s' in k or 'speedup' in k}, flush=True)"
done; done
for i in 1 2; do for arm in base main; do
  /work/$arm/.venv/bin/python /work/$arm/benchmarks/core_backfill.py > /work/bench/quiet-core-$arm-$i.json 2>&1
  python3 -c "
import json; t=open('/work/bench/quiet-core-$arm-$i.json').read(); d=json.loads(t[t.index('{'):]); print('core', '$arm', $i, d['first_run_records_per_s'], d['resume_records_per_s'], d['texts_embedded_twice'], d['status'], flush=True)"
done; done
