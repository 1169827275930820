//! Memory for training steps.
//!
//! A training step allocates and frees the same few hundred MiB of activations and gradients
//! (0.1 to 50 MB each, the word-embedding gradient the largest). An allocator that hands freed
//! memory back to the OS makes the next step fault all of it in again, page by page, with the
//! kernel zeroing each page: measured on MiniLM fine-tuning at batch 32, ~90,000 page faults and
//! a fifth of every CPU step with glibc malloc (tuning its thresholds did not stop it: threads
//! allocate from separate arenas that shrink on their own). The `distill` binary and the
//! benchmarks use mimalloc as their allocator; for training it is told to keep freed memory for
//! reuse ("purge delay" -1), after which a step faults a handful of pages. Peak memory is the
//! same: the same buffers are live at the peak either way.

/// mimalloc's `mi_option_purge_delay` (the position in `mi_option_e`, mimalloc.h; the Rust
/// bindings do not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for reuse for the rest of the process (a no-op where mimalloc is not the
/// global allocator). Called when a CPU training run starts; servers keep returning memory.
pub fn keep_freed_memory() {
    // SAFETY: sets a process-wide allocator option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// The purge delay currently in force (ms; -1 = never purge), for tests.
pub fn purge_delay() -> i64 {
    // SAFETY: reads an allocator option.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_option_is_mimallocs_purge_delay() {
        // mimalloc v3's default is 1000 ms (src/options.c), unless the environment overrides it.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(super::purge_delay(), 1000);
        }
        super::keep_freed_memory();
        assert_eq!(super::purge_delay(), -1);
    }
}
