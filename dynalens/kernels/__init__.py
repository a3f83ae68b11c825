"""Heavy statistics: each op has a float64 torch reference, a CPU fallback, a Triton
kernel for CUDA tensors, and a dispatcher. Importing this package never imports triton."""
