"""Units and element sizes: defined here once, imported everywhere else."""

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Bytes per element of each dtype a config may name.
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1, "int8": 1}
