/* A link-time stand-in for the CUDA driver library (libcuda.so), for building vidx with
 * `--features cuda` on a machine without an NVIDIA driver. No PyPI wheel ships the driver or
 * its stub, and cudarc links `-lcuda`, so `scripts/setup-cuda.sh` compiles this file into
 * `.tools/cuda/root/lib64/stubs/libcuda.so` with the soname `libcuda.so.1`: the linker
 * resolves the driver symbols here, and the binary records `NEEDED libcuda.so.1`, which the
 * real driver provides at run time.
 *
 * NEVER put the directory holding this library on a GPU machine's library path
 * (LD_LIBRARY_PATH, ld.so.conf): it would shadow the real driver. Should it be loaded anyway,
 * every entry point returns CUDA_ERROR_STUB_LIBRARY (34), which cudarc reports as "CUDA driver
 * is a stub library", exactly like NVIDIA's own stub, instead of crashing.
 *
 * Each entry point is defined without parameters: a stub is called with the driver's real
 * arguments, which the x86-64 and AArch64 calling conventions let a callee ignore. The names
 * come from libcuda-stub-symbols.inc (all that cudarc declares). */

#define CUDA_ERROR_STUB_LIBRARY 34

#define STUB(name)                                                                               \
    int name(void);                                                                              \
    int name(void) { return CUDA_ERROR_STUB_LIBRARY; }

#include "libcuda-stub-symbols.inc"
