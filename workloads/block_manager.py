"""The KV cache as fixed-size blocks, as serving engines hold it (vLLM, nano-vLLM).

A sequence holds ceil(tokens / block_tokens) blocks for the tokens whose keys
and values are cached; a step that would cache a token beyond its last block
needs one more free block. Blocks are counted, not named: without shared
prefixes (the token sources draw independent requests) which block a sequence
holds changes nothing that the simulator or the real runs measure.
"""

from __future__ import annotations

from vocab.errors import CapacityError


class BlockManager:
    def __init__(self, blocks: int, block_tokens: int):
        self.blocks = blocks
        self.block_tokens = block_tokens
        self.free = blocks
        self.held: dict[int, int] = {}  # request id -> blocks it holds

    @property
    def used(self) -> int:
        return self.blocks - self.free

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    def extra_for(self, request: int, tokens: int) -> int:
        """Blocks `request` needs beyond those it holds to cache `tokens` tokens in all."""
        extra = -(-tokens // self.block_tokens) - self.held.get(request, 0)
        return extra if extra > 0 else 0

    def can_grow(self, request: int, tokens: int) -> bool:
        return self.extra_for(request, tokens) <= self.free

    def grow(self, request: int, tokens: int) -> None:
        extra = self.extra_for(request, tokens)
        if extra > self.free:
            raise CapacityError("workload.scheduler.kv_blocks", f"request {request} needs {extra} more KV blocks, "
                                f"{self.free} are free", "a scheduler must check can_grow first (a bug)")
        self.free -= extra
        self.held[request] = self.held.get(request, 0) + extra

    def release(self, request: int) -> None:
        self.free += self.held.pop(request, 0)
