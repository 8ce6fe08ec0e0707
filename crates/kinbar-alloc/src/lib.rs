//! The single place Kinbar calls into C: `kinbar` itself is
//! `#![forbid(unsafe_code)]`, so this FFI call lives in its own small crate
//! where it can be read in one sitting.
//!
//! glibc's allocator returns freed memory to the system only from the top
//! of each arena. A bulk import frees its input (hundreds of MB of strings
//! for a million relationships, decoded on whichever runtime thread read
//! the stream) while the store's long-lived index is allocated above it, so
//! without help the process stays resident at its peak although the memory
//! is free. `malloc_trim(0)` walks every arena and returns their free pages.

/// Asks the C allocator to return the memory it holds free to the system;
/// true if it gave anything back. Elsewhere than glibc it does nothing
/// (musl and other allocators have no such call, or return memory
/// themselves). Costs a walk of every arena (milliseconds per GB, other
/// threads' allocations wait meanwhile): call it after rare, large frees.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() -> bool {
    // SAFETY: `malloc_trim` takes no pointers and has no preconditions; it
    // only rearranges glibc's own free lists under their locks.
    unsafe { libc::malloc_trim(0) != 0 }
}

/// See the glibc variant: nothing to do here.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}
