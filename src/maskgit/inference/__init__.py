"""How the library runs its models fast, behind one seam; the models themselves are plain PyTorch.

- ``settings``: the process-wide speed switches (every ``MASKGIT_*`` speed variable, read once).
- ``cpu``: what the CPU can do (instruction sets, native bf16, oneDNN bf16 packing, the fp32 GEMM library).
- ``precision``: the precision rule and ``prepare(module, precision, device)``, the one preparation of a
  transformer for inference at a precision (int8, bf16 or fp32 linears, the matching attention and MLP kernels).
- ``kernels``: the CPU kernels it installs (oneDNN Graph fused attention, pre-packed oneDNN linears with the
  MLP's GELU fused) and the module replacement that puts them in and takes them out again.
- ``compile``: frozen static-shape ``torch.compile`` and power-of-two batch chunks.
- ``malloc``: glibc malloc thresholds for the process.

Nothing is imported here, so ``maskgit.inference.settings`` and ``maskgit.inference.malloc`` load without torch."""
