"""CPU speed code, kept apart from the architecture and applied explicitly by its callers.

- `gptlab.cpu.memory`: process memory settings (malloc reuse, huge pages) that the CLI applies
  before torch is imported; library users call `tune_process_memory()` themselves.
- `gptlab.cpu.decode`: each decode step's matrix-vector products through numpy's BLAS,
  entered by generation.
- `gptlab.cpu.head_loss`: the training loss's vocabulary projection in chunks fused with the
  cross-entropy, installed by training.

Importing this package (or `memory`) imports nothing heavy and changes nothing.
"""
