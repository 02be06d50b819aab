#!/usr/bin/env bash
# Everything the real runs and the calibration measure on a GPU, in parts that each fit one 10-minute
# device call.
#
#   bash real_runs/gpu_session.sh PART [OUT]
#     PART: tests | bench | e2e | runs | ssd | serve | multi | probe | calibrate | calibrate-quick
#
#   tests      the CUDA tests (skipped on CPU) and the kernels' CPU tests
#   bench      hashing, the zero-copy gather at the H100 reference points, host_dma, HBM gather (3-4 min)
#   e2e        Dense-4B decode at batch 512 and 128, every placement including none (no Engram); the
#              largest tables host and GPU hold (E2E_TABLE_GIB=N fixes the size, e.g. to save time)
#   runs       records at several table sizes, every placement, decode and prefill
#   ssd        the ssd placement (table file on the local drive, SSD_DIR=folder, default the temp folder):
#              tiny decode and prefill at 0.25 and 2 GiB, without and with a DRAM cache of 25 % of the table,
#              after 5 warm-up steps (the CPU runs' first recorded steps were a start-up transient)
#   serve      serving runs (real_runs/serve.py) of the paper's Table 4 benchmark shape: Dense-4B, 128
#              requests at once, lengths uniform 100..1024, an 8 GiB table; none, hbm, host_dma, host_uva
#              (SERVE_REQUESTS=N changes the count); `engram-sim compare` checks sim.serve against them
#   multi      every GPU of the machine at once (python -m real_runs.multi_gpu, torch.distributed + NCCL):
#              tiny and the shared-host config with the table replicated per GPU and sharded (all-gather
#              of the rows); on a machine of one GPU it prints "skipped: ..." and records nothing
#   probe      the simulator's end-to-end mechanisms only (python -m tools.calibrate.probe): GEMM and
#              decode-attention rate ladders, CUDA-graph timing and the SM contention probe of the zero-copy
#              gather, written over this GPU's shipped profile (a few minutes; PROBE_ARGS=--engine adds the
#              engine's step, --quick fewer points)
#   calibrate  the whole profile (calibrate-quick: fewer points), the probe's figures included, and
#              uva.cold_line_ns (zero-copy gathers timed back to back and after an L2-flushing copy)
#
# OUT (default $OUT, else out/gpu) receives a log per part and, since a device call returns at most
# 8 files, the run records as one tarball (records-PART.tgz). Unpack the records into
# real_runs/records/ and the profile into profiles/, then commit them; `engram-sim compare
# real_runs/records/*.json` and `engram-sim demo --profile profiles/FILE` then run without a GPU.
#
# Needs what the GPU image has (torch, Triton, Numba, pandas, nvidia-ml-py, tokenizers, tqdm); not
# SimPy or Altair: nothing here imports them.
set -euo pipefail
part=${1:?usage: gpu_session.sh tests|bench|e2e|runs|ssd|serve|multi|probe|calibrate|calibrate-quick [OUT]}
out=${2:-${OUT:-out/gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)
log="$out/$part.log"
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current,memory.total \
  --format=csv,noheader 2>&1 | tee "$log" || true
records=$(mktemp -d)

case "$part" in
  tests)     # the CUDA tests (skipped on CPU) and the kernels' CPU tests
    python3 -m pytest -p no:cacheprovider -q -rs tests/test_real_stores.py tests/test_ssd_store.py tests/test_real_run.py \
      tests/test_hashing.py tests/test_real_engram.py tests/test_calibrate_gpu.py 2>&1 | tee -a "$log" ;;
  bench)     # hashing, UVA gather at the reference points, host_dma, HBM gather: about 3-4 minutes
    python3 -m real_runs.bench --parts hash,uva,dma,hbm --out "$out/bench.json" 2>&1 | tee -a "$log" ;;
  e2e)       # Dense-4B decode, batches 512 and 128 (KV 560 tokens), every placement including none
    python3 -m real_runs.bench --parts e2e --e2e-batches 512,128 ${E2E_TABLE_GIB:+--e2e-table-gib "$E2E_TABLE_GIB"} \
      --records "$records" --out "$out/bench-e2e.json" 2>&1 | tee -a "$log" ;;
  runs)      # Dense-4B (the paper's Table 4 shape) at 1, 8 and 32 GiB, and Engram-27B (MoE) at 2 GiB:
             # every placement, decode and prefill. Batches sized so the hbm runs fit 80 GB.
    cfgs=$(mktemp -d)
    write_cfg() {  # name base gib phase sequences
      printf 'extends = "%s"\nname = "%s"\n[engram]\ntable_gib = %s\n[workload]\nphase = "%s"\nsequences = %s\ntokens_per_step = 8192\nsteps = 16\n' \
        "$2" "$1" "$3" "$4" "$5" > "$cfgs/$1.toml"
    }
    for phase in decode prefill; do
      for gib in 1 8 32; do write_cfg "dense4b-${gib}gib-$phase" dense-4b-100b "$gib" "$phase" 128; done
      write_cfg "engram27b-2gib-$phase" engram-27b 2 "$phase" 16
    done
    for cfg in "$cfgs"/*.toml; do
      name=$(basename "$cfg" .toml)
      for placement in hbm host_dma host_uva hbm_cache; do
        python3 -m real_runs "$cfg" --placement "$placement" --out "$records/$name-$placement.json" 2>&1 \
          | tee -a "$log" || true
      done
    done
    rm -rf "$cfgs" ;;
  ssd)       # the drive tier: the same runs as the committed CPU records (real_runs/records/README.md), on the GPU
    for phase in decode prefill; do
      cfg=tiny; [ "$phase" = prefill ] && cfg=real_runs/records/tiny-prefill.toml
      for size in 0.25 2; do
        for cache in nocache dram25; do
          dram=(); [ "$cache" = dram25 ] && dram=(--dram-cache-gib "$(python3 -c "print($size / 4)")")
          python3 -m real_runs "$cfg" --placement ssd --table-gib "$size" "${dram[@]}" --steps 30 --warmup 5 \
            ${SSD_DIR:+--ssd-dir "$SSD_DIR"} --out "$records/tiny-gpu-ssd-$phase-${size}gib-$cache.json" 2>&1 \
            | tee -a "$log" || true
        done
      done
    done ;;
  serve)     # the paper's benchmark shape as a real serving run, smaller: Dense-4B, an 8 GiB table, 128 requests
    cfgs=$(mktemp -d)
    printf 'extends = "paper-table4-dense4b"\nname = "dense4b-serve-8gib"\nprofile = "h100-sxm"\n[engram]\ntable_gib = 8\n[workload.requests]\ncount = %s\n' \
      "${SERVE_REQUESTS:-128}" > "$cfgs/serve.toml"
    for placement in none hbm host_dma host_uva; do
      python3 -m real_runs "$cfgs/serve.toml" --placement "$placement" \
        --out "$records/dense4b-gpu-serve-8gib-$placement.json" 2>&1 | tee -a "$log" || true
    done
    rm -rf "$cfgs" ;;
  multi)     # several GPUs at once: replicate (one runner per GPU) and shard (rows all-gathered over NVLink)
    for cfg in tiny real_runs/records/shared-host.toml; do
      for mode in replicate shard; do
        python3 -m real_runs.multi_gpu "$cfg" --table "$mode" --steps 16 --out "$records/multi-$mode" 2>&1 \
          | tee -a "$log" || true
      done
    done ;;
  probe)     # gpu.matmul_curve, memory_curve, graph_*, sm_count, uva_rows_per_cta, uva_interference
    name=$(python3 -c "import torch; from tools.calibrate.output import slug; print(slug(torch.cuda.get_device_name()))")
    # shellcheck disable=SC2086  # PROBE_ARGS is a list of options
    python3 -m tools.calibrate.probe ${PROBE_ARGS:-} --out "$out/$name-probe-$(date +%F).toml" 2>&1 \
      | tee -a "$log" ;;
  calibrate | calibrate-quick)
    flag=$([ "$part" = calibrate-quick ] && echo --quick || true)
    name=$(python3 -c "import torch; from tools.calibrate.output import slug; print(slug(torch.cuda.get_device_name()))")
    python3 -m tools.calibrate $flag --out "$out/$name-measured-$(date +%F).toml" 2>&1 | tee -a "$log" ;;
  *) echo "unknown part '$part': use tests, bench, e2e, runs, ssd, serve, multi, probe, calibrate or calibrate-quick" >&2; exit 2 ;;
esac
if [ -n "$(ls -A "$records")" ]; then
  tar czf "$out/records-$part.tgz" -C "$records" .
fi
rm -rf "$records"
