"""embedforge: turn an open decoder LLM into a text-embedding model (Wang et al. 2024) on Ray.

Pure maths (prompts, pooling, loss) lives in small modules with no Ray import; Ray appears only in
the stage packages (generate, train, evaluate, serving) and the thin drivers under ``jobs/``.
"""

import os

__version__ = "0.1.0"

# PyTorch's CPU allocator backs tensors of 2 MB and more with transparent huge pages when this is set
# (read at its first large allocation, so setting it here, before any model work, is in time; every
# process that runs embedforge code imports this package first: drivers, Ray workers, actors,
# replicas). Without it each large tensor is faulted in 4 KB at a time, and a freed one is returned
# to the kernel and faulted in again on the next step: on a cloud VM, where a page fault is
# expensive, that page-faulting took about half of a ZeRO-3 training worker's CPU time
# (docs/configuration.md#huge-pages). A user's own setting (0 turns it off) wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
