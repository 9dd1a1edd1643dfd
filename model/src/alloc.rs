//! glibc `malloc` settings for processes that train or sample.
//!
//! libtorch's CPU allocator takes every tensor buffer from `malloc` and gives it back to `free`
//! as soon as the tensor dies. glibc serves a large request with a fresh `mmap` (or, once its
//! dynamic threshold has risen, from the heap, whose free top it soon hands back to the kernel), so
//! a training step that allocates and frees the same few hundred MB every step faults every page
//! in again: 15-20% of a VAE step at batch 1024 on a 2-vCPU VM. With the settings below freed
//! buffers stay in the heap for the next step to reuse, the effect PyTorch's CPU performance
//! guides get by preloading jemalloc or tcmalloc. The cost: the process keeps the heap of its
//! busiest step until it exits, which for a training or sampling run is its peak anyway.

/// Keeps freed memory in the process heap for reuse (see the module docs). Returns whether the
/// settings were applied (only with glibc; elsewhere the allocator is left as it is).
pub fn reuse_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is called with glibc's own
        // parameter codes and in-range values, and glibc serialises it with the arenas' locks.
        unsafe {
            // Never serve a request from a private mapping (mmap), so it is reused after free
            // instead of unmapped; never trim the heap's free top (2 GiB is "never" here:
            // trimming needs that much contiguous free memory at the top).
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
