"""One configuration schema, shared by the simulator and the real runs.

A run is: a backbone, an Engram configuration, a placement of the table, a
workload, and a hardware profile (by name or path). Each part is a dataclass
built from a TOML table; bad values raise ConfigError naming the field.

Layer ids are zero-based indices into the backbone's layers (the paper's
"layers 2 and 15" are ids 1 and 14 here).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import ClassVar, Literal

from vocab.errors import ConfigError
from vocab.geometry import engram_table_sizes
from vocab.placements import CACHE_POLICIES, HBM_CACHE, HOST_PATHS, PLACEMENTS, SSD, SSD_READ_PATHS, default_miss_path
from vocab.schema import build, check_ranges, read_toml, require, to_dict
from vocab.units import DTYPE_BYTES, GiB
from vocab.workload_config import (  # noqa: F401 (names the rest of the project reads from vocab.config)
    SEEDS,
    LengthDistribution,
    RequestsConfig,
    SchedulerConfig,
    TokenSourceConfig,
    WorkloadConfig,
)

Dtype = Literal[tuple(DTYPE_BYTES)]

# Ranges (low, high, unit) of each number: generous for real models, and bounded so that what a run
# holds in memory and how long it takes can be estimated before it starts (cli/args.py checks that).
THREADS = (1, 1024, "threads")
MAX_TABLE_GIB = 2.0**20  # 1 PiB
# An `extends` chain longer than this is a mistake (the shipped presets use one level).
MAX_EXTENDS_DEPTH = 8
Placement = Literal[PLACEMENTS]
HostPath = Literal[HOST_PATHS]


@dataclass
class AttentionConfig:
    heads: int
    kv_heads: int
    head_dim: int
    # Values cached per token per layer. Default 2 * kv_heads * head_dim (K and V);
    # MLA caches one compressed latent (DeepSeek-V3: 512 + 64 = 576).
    kv_cache_dim: int | None = None

    RANGES: ClassVar[dict] = {
        "heads": (1, 1024, "heads"), "kv_heads": (1, 1024, "heads"), "head_dim": (1, 4096, "values"),
        "kv_cache_dim": (1, 1 << 16, "values")}

    def validate(self, path: str) -> None:
        check_ranges(self, path, self.RANGES, ConfigError)
        require(self.heads % self.kv_heads == 0, ConfigError, f"{path}.kv_heads",
                f"{self.kv_heads} does not divide heads={self.heads}", "use a divisor of heads")

    @property
    def cache_dim(self) -> int:
        return self.kv_cache_dim if self.kv_cache_dim else 2 * self.kv_heads * self.head_dim


@dataclass
class MoEConfig:
    shared_experts: int
    routed_experts: int
    top_k: int
    expert_intermediate_size: int

    RANGES: ClassVar[dict] = {
        "shared_experts": (0, 256, "experts"), "routed_experts": (1, 4096, "experts"), "top_k": (1, 4096, "experts"),
        "expert_intermediate_size": (1, 1 << 18, "values")}

    def validate(self, path: str) -> None:
        check_ranges(self, path, self.RANGES, ConfigError)
        require(self.top_k <= self.routed_experts, ConfigError, f"{path}.top_k",
                f"{self.top_k} is not in 1..routed_experts={self.routed_experts}",
                f"lower top_k to at most {self.routed_experts}, or raise routed_experts")


@dataclass
class BackboneConfig:
    name: str
    layers: int
    hidden_size: int
    attention: AttentionConfig
    # Intermediate size of the dense FFN (SwiGLU: gate, up, down) used by dense layers.
    intermediate_size: int = 0
    moe: MoEConfig | None = None
    # Layers with a dense FFN. Without [moe], every layer is dense.
    dense_layers: list[int] = field(default_factory=list)
    vocab_size: int = 129280
    dtype: Dtype = "bf16"
    # The LM head's logits each step (false: a backbone benchmark that stops at the last layer).
    lm_head: bool = True

    RANGES: ClassVar[dict] = {
        "layers": (1, 1024, "layers"), "hidden_size": (1, 1 << 17, "values"),
        "intermediate_size": (0, 1 << 20, "values"), "vocab_size": (1, 1 << 24, "tokens")}

    def validate(self, path: str) -> None:
        check_ranges(self, path, self.RANGES, ConfigError)
        for i, layer in enumerate(self.dense_layers):
            require(0 <= layer < self.layers, ConfigError, f"{path}.dense_layers[{i}]",
                    f"{layer} is outside 0..{self.layers - 1}", "use zero-based layer ids")
        needs_dense = self.moe is None or bool(self.dense_layers)
        require(not needs_dense or self.intermediate_size > 0, ConfigError, f"{path}.intermediate_size",
                "must be > 0 for dense layers", "set intermediate_size, or add [backbone.moe] and no dense_layers")

    def is_dense(self, layer: int) -> bool:
        return self.moe is None or layer in self.dense_layers


@dataclass
class EngramConfig:
    layer_ids: list[int]
    max_ngram_size: int = 3
    heads_per_order: int = 8
    # Values per token per Engram layer; each of the (N-1)*H rows holds d_mem / ((N-1)*H).
    d_mem: int = 1280
    table_dtype: Dtype = "bf16"
    # Configured size per order (the prime rule picks rows per head table) ...
    table_rows_per_order: list[int] | None = None
    # ... or the total size of all layers' tables, from which rows per head are derived.
    table_gib: float | None = None
    compressed_vocab_size: int = 99092
    compressed_pad_id: int = 2
    seed: int = 0
    branches: int = 1
    conv_kernel: int = 4

    RANGES: ClassVar[dict] = {
        "max_ngram_size": (2, 8, "tokens"), "heads_per_order": (1, 64, "heads"), "d_mem": (1, 1 << 16, "values"),
        "table_rows_per_order": (1, 1 << 40, "rows"), "table_gib": (0, MAX_TABLE_GIB, "GiB"),
        "compressed_vocab_size": (2, 1 << 24, "ids"), "seed": SEEDS, "branches": (1, 16, "branches"),
        "conv_kernel": (1, 64, "taps")}

    def validate(self, path: str) -> None:
        check_ranges(self, path, self.RANGES, ConfigError)
        require(len(self.layer_ids) > 0, ConfigError, f"{path}.layer_ids", "is empty", "list at least one layer id")
        require(len(set(self.layer_ids)) == len(self.layer_ids), ConfigError, f"{path}.layer_ids",
                "has duplicates", "list each layer once")
        require(self.d_mem % self.tables_per_layer == 0, ConfigError, f"{path}.d_mem",
                f"{self.d_mem} is not divisible by (max_ngram_size-1)*heads_per_order={self.tables_per_layer}",
                "use a multiple of it")
        given = (self.table_rows_per_order is not None) + (self.table_gib is not None)
        require(given == 1, ConfigError, f"{path}.table_gib",
                "give exactly one of table_gib and table_rows_per_order", "remove one of them")
        if self.table_rows_per_order is not None:
            require(len(self.table_rows_per_order) == self.max_ngram_size - 1, ConfigError,
                    f"{path}.table_rows_per_order", f"has {len(self.table_rows_per_order)} entries",
                    f"give one per order 2..{self.max_ngram_size} ({self.max_ngram_size - 1} entries)")
        if self.table_gib is not None:
            require(self.table_gib > 0, ConfigError, f"{path}.table_gib", "must be > 0", "use a positive size in GiB")
        require(0 <= self.compressed_pad_id < self.compressed_vocab_size, ConfigError, f"{path}.compressed_pad_id",
                "is outside the compressed vocabulary", "use an id below compressed_vocab_size")

    @property
    def tables_per_layer(self) -> int:
        return (self.max_ngram_size - 1) * self.heads_per_order

    @property
    def values_per_row(self) -> int:
        return self.d_mem // self.tables_per_layer

    @property
    def row_bytes(self) -> int:
        return self.values_per_row * DTYPE_BYTES[self.table_dtype]

    def configured_rows_per_order(self) -> list[int]:
        if self.table_rows_per_order is not None:
            return list(self.table_rows_per_order)
        per_head = self.table_gib * GiB / (len(self.layer_ids) * self.tables_per_layer * self.row_bytes)
        return [max(2, int(per_head))] * (self.max_ngram_size - 1)

    @cached_property
    def table_sizes(self) -> dict[int, list[list[int]]]:
        """{layer: [[prime rows per head] per order]} (the official rule)."""
        return engram_table_sizes(self.configured_rows_per_order(), self.max_ngram_size,
                                  self.heads_per_order, self.layer_ids)

    def layer_rows(self, layer: int) -> int:
        return sum(sum(heads) for heads in self.table_sizes[layer])

    def layer_table_bytes(self, layer: int) -> int:
        return self.layer_rows(layer) * self.row_bytes

    @property
    def total_table_bytes(self) -> int:
        return sum(self.layer_table_bytes(layer) for layer in self.layer_ids)


def helper_threads_for(omp_wait_policy: str) -> str:
    """placement.helper_threads of a run made under this OMP_WAIT_POLICY (passive threads sleep)."""
    return "sleep" if str(omp_wait_policy).strip().upper() == "PASSIVE" else "spin"


@dataclass
class PlacementConfig:
    kind: Placement = "hbm"
    # CPU threads that hash token ids into row ids, and that gather rows (host_dma).
    hash_threads: int = 8
    gather_threads: int = 8
    # Deduplicate (and sort) a step's row ids before fetching; engines do.
    dedup: bool = True
    # host_dma: rows are gathered into pinned staging chunks and copied chunk by chunk.
    staging_chunk_mib: float = 4.0
    staging_buffers: int = 2
    # hbm_cache: hot rows in HBM, misses through miss_path (ssd: an optional HBM cache in front).
    cache_gib: float | None = None
    cache_fraction: float | None = None
    cache_policy: Literal[CACHE_POLICIES] = "lru"
    # None: the placement's own default (vocab.placements.default_miss_path: host_uva for hbm_cache, host_dma
    # for ssd's DRAM-cache hits, which a CPU can then run). Read it through `misses_via`.
    miss_path: HostPath | None = None
    # ssd: the table in a file on an NVMe drive. Warm rows in a DRAM cache (None or 0: none), whose hits
    # reach HBM through miss_path; the rest read from the drive by ssd_threads host threads, each with
    # ssd_queue_depth reads in flight (1: synchronous preadv), into pinned staging and copied to HBM, or
    # straight into HBM with ssd_reads = "gds".
    dram_cache_gib: float | None = None
    dram_cache_policy: Literal[CACHE_POLICIES] = "lru"
    ssd_threads: int = 16
    ssd_queue_depth: int = 1
    ssd_reads: Literal[SSD_READ_PATHS] = "staging"
    # Real runs: the folder on the drive where the table file is written (None: the system's temp folder).
    ssd_dir: str | None = None
    # How many Engram fetches run at once on the fetch side (1 = one fetch stream, in layer order).
    fetch_streams: int = 1
    # Where a step's row ids are made: "worker" threads hash while the GPU runs the layers before
    # the Engram layer (an engine with a hashing thread); on the host's "critical_path" before the
    # step's first kernels are launched (hash, dedup or sort, upload: a simple harness).
    hash_on: Literal["worker", "critical_path"] = "worker"
    # host_uva: thread blocks of the zero-copy gather kernel. None: one per gpu.uva_rows_per_cta rows
    # (a grid that grows with the step); a number: a persistent grid that loops over the rows, which
    # gathers slower but leaves more SMs to the layers it overlaps.
    uva_ctas: int | None = None
    # How the CPU threads of a parallel hash or gather wait between calls (OpenMP's OMP_WAIT_POLICY):
    # "spin" (the runtime's default: ready at once, holding their cores) or "sleep" (passive: each call
    # wakes them, and they join it host.thread_wake_us late: `engram-sim run --omp-wait-policy passive`).
    helper_threads: Literal["spin", "sleep"] = "spin"

    RANGES: ClassVar[dict] = {
        "hash_threads": THREADS, "gather_threads": THREADS, "staging_chunk_mib": (0, 1 << 14, "MiB"),
        "staging_buffers": (1, 1024, "buffers"), "cache_gib": (0, MAX_TABLE_GIB, "GiB"),
        "fetch_streams": (1, 64, "streams"), "uva_ctas": (1, 1 << 20, "thread blocks"),
        "dram_cache_gib": (0, MAX_TABLE_GIB, "GiB"), "ssd_threads": THREADS, "ssd_queue_depth": (1, 4096, "reads")}

    @property
    def misses_via(self) -> str:
        """The host path rows take past the HBM cache (hbm_cache's misses, ssd's DRAM-cache hits)."""
        return self.miss_path or default_miss_path(self.kind)

    def validate(self, path: str) -> None:
        check_ranges(self, path, self.RANGES, ConfigError)
        require(self.staging_chunk_mib > 0, ConfigError, f"{path}.staging_chunk_mib", "must be > 0",
                "use e.g. 4")
        given = (self.cache_gib is not None) + (self.cache_fraction is not None)
        if self.kind == HBM_CACHE:
            require(given == 1, ConfigError, f"{path}.cache_gib",
                    "hbm_cache needs exactly one of cache_gib and cache_fraction",
                    "set e.g. cache_fraction = 0.1")
        if self.kind == SSD:
            require(given <= 1, ConfigError, f"{path}.cache_gib", "give at most one of cache_gib and cache_fraction",
                    "remove one of them")
        if self.cache_fraction is not None:
            require(0.0 <= self.cache_fraction <= 1.0, ConfigError, f"{path}.cache_fraction",
                    f"{self.cache_fraction} is outside [0, 1]", "use a fraction of the table")


@dataclass
class DeploymentConfig:
    """How a run spreads over a server's GPUs (the profile's [server]); the defaults are one GPU."""
    gpus: int = 1
    # GPUs per tensor-parallel group (dividing gpus); gpus / tensor_parallel data-parallel replicas.
    tensor_parallel: int = 1
    # replicate: every GPU reads a whole table; shard: the table split over shard_over's GPUs, each holding 1/g of
    # the rows in the placement's memory, the rows exchanged over NVLink after the fetch.
    table: Literal["replicate", "shard"] = "replicate"
    # group: over the tensor-parallel group (same tokens: each fetches 1/g of the step's rows, then an all-gather);
    # server: over all GPUs (tensor_parallel = 1: each owner fetches what every replica asks of its slice, then an
    # all-to-all).
    shard_over: Literal["group", "server"] = "group"
    # The table in host memory, replicated: one copy per NUMA node, each GPU reading its own node's (per_numa), or
    # one copy with its pages interleaved over the nodes (per_server). A shard's slice sits on its GPU's node.
    host_copies: Literal["per_numa", "per_server"] = "per_numa"
    # CPU hash and gather threads pinned to their GPU's node (local: a core pool per node), or spread by the OS over
    # all nodes (any: one pool; a share 1 - 1/nodes of their DRAM traffic crosses the socket link).
    gather_numa: Literal["local", "any"] = "local"

    RANGES: ClassVar[dict] = {"gpus": (1, 1024, "GPUs"), "tensor_parallel": (1, 1024, "GPUs")}

    def validate(self, path: str) -> None:
        check_ranges(self, path, self.RANGES, ConfigError)
        require(self.gpus % self.tensor_parallel == 0, ConfigError, f"{path}.tensor_parallel",
                f"{self.tensor_parallel} does not divide gpus={self.gpus}", "use a divisor of deployment.gpus")
        require(not (self.table == "shard" and self.shard_over == "server" and self.tensor_parallel > 1),
                ConfigError, f"{path}.shard_over", "'server' shards over data-parallel replicas of one GPU each, "
                f"not tensor_parallel={self.tensor_parallel}", "use shard_over = 'group', or tensor_parallel = 1")

    @property
    def replicas(self) -> int:
        return self.gpus // self.tensor_parallel

    @property
    def shard_size(self) -> int:
        """GPUs one table is split over (1: every GPU holds it whole)."""
        if self.table == "replicate":
            return 1
        return self.gpus if self.shard_over == "server" else self.tensor_parallel


@dataclass
class RunConfig:
    name: str
    backbone: BackboneConfig
    engram: EngramConfig
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    # A shipped profile's name (see `engram-sim profiles`) or a path to a profile TOML.
    profile: str = "h100-sxm"
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)

    def validate(self, path: str) -> None:
        for i, layer in enumerate(self.engram.layer_ids):
            require(0 <= layer < self.backbone.layers, ConfigError, f"engram.layer_ids[{i}]",
                    f"{layer} is outside 0..{self.backbone.layers - 1}", "use zero-based backbone layer ids")

    # -- typed edits: each returns a validated copy ------------------------------------------------
    def with_engram(self, **changes) -> "RunConfig":
        """Copy with EngramConfig fields changed; a table size given one way drops the other way."""
        if "table_gib" in changes:
            changes.setdefault("table_rows_per_order", None)
        if "table_rows_per_order" in changes:
            changes.setdefault("table_gib", None)
        return self._with(engram=_edit(self.engram, "engram", changes))

    def with_table_gib(self, table_gib: float) -> "RunConfig":
        return self.with_engram(table_gib=float(table_gib))

    def with_placement(self, kind: str | None = None, **changes) -> "RunConfig":
        """Copy with the placement kind and/or PlacementConfig fields changed."""
        if kind is not None:
            changes["kind"] = kind
        if "cache_gib" in changes:
            changes.setdefault("cache_fraction", None)
        if "cache_fraction" in changes:
            changes.setdefault("cache_gib", None)
        return self._with(placement=_edit(self.placement, "placement", changes))

    def with_backbone(self, **changes) -> "RunConfig":
        return self._with(backbone=_edit(self.backbone, "backbone", changes))

    def with_workload(self, **changes) -> "RunConfig":
        return self._with(workload=_edit(self.workload, "workload", changes))

    def with_phase(self, phase: str) -> "RunConfig":
        return self.with_workload(phase=phase)

    def with_steps(self, steps: int) -> "RunConfig":
        return self.with_workload(steps=int(steps))

    def with_profile(self, profile: str) -> "RunConfig":
        return self._with(profile=str(profile))

    def with_deployment(self, **changes) -> "RunConfig":
        return self._with(deployment=_edit(self.deployment, "deployment", changes))

    def _with(self, **parts) -> "RunConfig":
        out = dataclasses.replace(self, **parts)
        out.validate("")
        return out

    def to_dict(self) -> dict:
        return to_dict(self)

    def with_set(self, assignment: str) -> "RunConfig":
        """Copy with one `section.field=value` (e.g. `workload.sequences=128`), the value read as a TOML value
        (a bare word that is not one, e.g. host_dma, as a string), validated exactly as the TOML file is."""
        path, sep, text = assignment.partition("=")
        keys = [k.strip() for k in path.split(".")]
        if not sep or not all(keys) or not text.strip():
            raise ConfigError(path.strip() or assignment, f"{assignment!r} is not KEY=VALUE",
                              "use e.g. --set workload.sequences=128")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        data = self.to_dict()
        table = data
        for i, key in enumerate(keys[:-1]):
            inner = table.setdefault(key, {})
            if not isinstance(inner, dict):
                raise ConfigError(".".join(keys[: i + 1]), "is a value, not a section", f"set {'.'.join(keys[: i + 1])}=...")
            table = inner
        table[keys[-1]] = value
        if keys[0] == "engram" and keys[-1] in ("table_gib", "table_rows_per_order"):  # one way to size it wins
            data["engram"].pop("table_rows_per_order" if keys[-1] == "table_gib" else "table_gib", None)
        return from_dict(data)


def _edit(part, path: str, changes: dict):
    """A validated copy of one config part. Values are checked as a TOML file's would be."""
    changes = {k: to_dict(v) if dataclasses.is_dataclass(v) else v for k, v in changes.items()}
    data = {**to_dict(part), **changes}
    return build(type(part), {k: v for k, v in data.items() if v is not None}, path, ConfigError)


def from_dict(data: dict) -> RunConfig:
    return build(RunConfig, data, "", ConfigError)


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("vocab.presets").iterdir() if p.name.endswith(".toml"))


def load_config(name_or_path: str | Path) -> RunConfig:
    """Load a run configuration from a TOML path or a shipped preset name.

    A file's `extends` (a preset name, or a path read against the file's own folder) is loaded first and
    the file's tables are merged over it; paths inside a file (workload.tokens.path and .tokenizer, a
    profile path) are read against that file's folder too, so a config runs the same from any folder."""
    return from_dict(_load_chain(name_or_path, "", []))


def _config_file(name_or_path: str | Path, field: str, folder: Path | None) -> Path:
    """The file a config name or path means: a path (against `folder` when relative), else a preset."""
    p = Path(name_or_path)
    if folder is not None and not p.is_absolute():
        p = folder / p
    if p.is_file():
        return p.resolve()
    if str(name_or_path) in preset_names():
        return Path(str(resources.files("vocab.presets").joinpath(f"{name_or_path}.toml"))).resolve()
    if folder is None:
        field, problem = str(name_or_path), "no such config file or preset"
    else:
        problem = f"no such config file or preset {str(name_or_path)!r} (read against {folder})"
    raise ConfigError(field, problem, f"give a TOML path or one of: {', '.join(preset_names())}")


def _load_chain(name_or_path: str | Path, field: str, chain: list[Path]) -> dict:
    """The merged tables of a config and the configs it extends; `chain` holds the files that extend it."""
    p = _config_file(name_or_path, field, chain[-1].parent if chain else None)
    if p in chain:
        names = " -> ".join(c.name for c in [*chain, p])
        raise ConfigError(f"{chain[-1]}: extends", f"forms a cycle ({names})", "extend a different config")
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise ConfigError(f"{chain[-1]}: extends", f"chains more than {MAX_EXTENDS_DEPTH} configs deep",
                          "extend a preset or a config that extends nothing")
    data = read_toml(p, ConfigError)
    _resolve_paths(data, p.parent)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{p}: extends", f"got {base!r}", "use a preset name or a TOML path in quotes")
    return _merge(_load_chain(base, f"{p}: extends", [*chain, p]), data)


def _resolve_paths(data: dict, folder: Path) -> None:
    """Relative paths in one file's tables, made absolute against that file's folder (in place)."""
    workload = data.get("workload") if isinstance(data.get("workload"), dict) else {}
    for part, keys in (("tokens", ("path", "tokenizer")), ("requests", ("path",))):
        table = workload.get(part)
        if isinstance(table, dict):
            for key in keys:
                if isinstance(table.get(key), str) and table[key] and not Path(table[key]).is_absolute():
                    table[key] = str(folder / table[key])
    profile = data.get("profile")
    # A profile is a shipped name unless it looks like a file; a relative file is read beside the config.
    if isinstance(profile, str) and (profile.endswith(".toml") or "/" in profile) and not Path(profile).is_absolute():
        data["profile"] = str(folder / profile)


def _merge(base: dict, over: dict, path: str = "") -> dict:
    out = dict(base)
    for k, v in over.items():
        field = f"{path}.{k}" if path else k
        if isinstance(out.get(k), dict) and not isinstance(v, dict):
            raise ConfigError(field, f"got {v!r}", "use a table")
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, field)
        else:
            out[k] = v
    if isinstance(over.get("engram"), dict):
        eng = out["engram"]
        if "table_gib" in over["engram"]:
            eng.pop("table_rows_per_order", None)
        elif "table_rows_per_order" in over["engram"]:
            eng.pop("table_gib", None)
    return out
