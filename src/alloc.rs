//! The process's memory allocator: jemalloc on Linux (the default `jemalloc` feature),
//! the platform's elsewhere or without the feature (heaptrack sees only malloc).
//!
//! Declared in the library so that every binary linking it (the daemon, the bench
//! examples, the tests) allocates the way production does.
//!
//! Why not glibc's malloc: a daemon that runs for months must keep its RSS near what it
//! uses. glibc keeps memory freed in a thread's arena for that arena's reuse, and a
//! block in the middle of an arena cannot go back to the OS while live state sits
//! around it; the large transient buffers of every commit (checkpoint bytes, snapshot
//! deltas, spill batches) leave such holes, which `cli/serve.rs` narrows by fixing
//! glibc's mmap threshold and trimming every 30 s. jemalloc hands dirty pages back to
//! the OS on a decay timer, from a background thread, whichever thread freed them. In
//! side-by-side 70-minute soaks both stayed flat, jemalloc 6 % lower (207 vs 220 MiB),
//! and `replay` took 13 % less CPU with it (docs/reliability.md "Soak",
//! docs/performance.md "jemalloc").
//!
//! jemalloc is also the C libraries' `malloc` (SQLite's, librdkafka's): the build
//! exports it unprefixed (`unprefixed_malloc_on_supported_platforms`). With glibc
//! serving them, the rows SQLite allocated on sqlx's worker thread were freed on the
//! reader's thread into the worker's arena, and the two threads took turns on that
//! arena's lock: futex calls were a third of an export's samples. One allocator for
//! everything: the 1d / agent export 0.82 of the time, the default `replay` 0.98
//! (21 pairs each), and the C libraries' freed memory goes back to the OS on the same
//! decay timer as the rest (docs/performance.md, "twentieth round").

/// jemalloc as the global allocator on Linux (tikv's build of it, as TiKV and Vector
/// use).
#[cfg(all(target_os = "linux", feature = "jemalloc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read once at its first allocation (the environment variable
/// `MALLOC_CONF` overrides them without a rebuild). `background_thread`: purge
/// from jemalloc's own thread rather than only inside later allocations, so an idle
/// daemon gives memory back too; `dirty_decay_ms:1000`: freed pages go back to the OS
/// after about a second instead of ten (a commit's buffers are freed within
/// milliseconds and the next commit is seconds away, so holding them buys nothing);
/// `muzzy_decay_ms:0`: no second, lazily-freed stage in which RSS still counts them.
#[cfg(all(target_os = "linux", feature = "jemalloc"))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "malloc_conf")]
pub static malloc_conf: Option<&'static std::ffi::CStr> =
    Some(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0");

/// The calling thread's allocator arena, for a helper thread to allocate from too
/// ([`use_arena`]). `None` without jemalloc.
///
/// Why: jemalloc gives each new thread an arena of its own, and memory freed in one
/// arena is not reused by allocations in another. A flush frees contacts' event lists
/// on the engine's thread and then builds its deltas: on a helper thread with an arena
/// of its own, those deltas took fresh pages instead of the ones just freed, and a
/// replay's peak grew by 10 MiB (docs/performance.md, "thirty-eighth round").
pub fn thread_arena() -> Option<u32> {
    #[cfg(all(target_os = "linux", feature = "jemalloc"))]
    {
        let mut arena: u32 = 0;
        let mut len = std::mem::size_of::<u32>();
        // SAFETY: `thread.arena` is an `unsigned` read through a pointer to one and
        // its size, as jemalloc's manual defines it; nothing is written.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"thread.arena".as_ptr(),
                (&raw mut arena).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (rc == 0).then_some(arena)
    }
    #[cfg(not(all(target_os = "linux", feature = "jemalloc")))]
    None
}

/// Make the calling thread allocate from `arena` ([`thread_arena`] of another
/// thread); `None` leaves it where it is. Memory already allocated stays valid
/// wherever it is freed.
pub fn use_arena(arena: Option<u32>) {
    #[cfg(all(target_os = "linux", feature = "jemalloc"))]
    if let Some(mut arena) = arena {
        // SAFETY: `thread.arena` is an `unsigned` written from a pointer to one and
        // its size; an index jemalloc does not know is refused (non-zero return),
        // which leaves the thread's arena as it was.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"thread.arena".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                (&raw mut arena).cast(),
                std::mem::size_of::<u32>(),
            )
        };
        if rc != 0 {
            tracing::debug!(arena, rc, "this thread keeps its own allocator arena");
        }
    }
    #[cfg(not(all(target_os = "linux", feature = "jemalloc")))]
    let _ = arena;
}

/// Where the process's memory is, in bytes, read when asked (`/metrics` and
/// `/api/v1/status`). A soak's RSS alone cannot tell live data that grows from memory
/// the allocator holds on to (docs/reliability.md, "Soak"); `allocated` against
/// `resident` can.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryStats {
    /// The process's resident set (`VmRSS`), from `/proc/self/statm`; `None` off
    /// Linux or where the file cannot be read.
    pub rss: Option<u64>,
    /// jemalloc's statistics; `None` in a build without the `alloc-stats` feature (jemalloc
    /// built with statistics costs about 2 % of `replay`'s CPU) or without jemalloc.
    pub allocator: Option<AllocatorStats>,
}

/// jemalloc's own account (its `stats.*`; jemalloc's manual defines them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AllocatorStats {
    /// Bytes in live allocations: what the program holds.
    pub allocated: u64,
    /// Bytes in the pages those allocations occupy (`allocated` plus the free space
    /// inside partly used pages).
    pub active: u64,
    /// Bytes of the allocator's own metadata.
    pub metadata: u64,
    /// Bytes of physically resident pages the allocator maps: active pages, metadata,
    /// and freed pages not yet given back to the OS.
    pub resident: u64,
    /// Bytes of address space kept for reuse after its pages went back to the OS (not
    /// resident).
    pub retained: u64,
}

/// Read [`MemoryStats`] now.
pub fn memory_stats() -> MemoryStats {
    MemoryStats {
        rss: rss_bytes(),
        allocator: allocator_stats(),
    }
}

/// `VmRSS` from `/proc/self/statm`'s second field (pages).
#[cfg(target_os = "linux")]
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// No `/proc` to read it from.
#[cfg(not(target_os = "linux"))]
fn rss_bytes() -> Option<u64> {
    None
}

#[cfg(all(target_os = "linux", feature = "alloc-stats"))]
fn allocator_stats() -> Option<AllocatorStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    // jemalloc caches its statistics; advancing the epoch refreshes them.
    epoch::advance().ok()?;
    let read = |r: tikv_jemalloc_ctl::Result<usize>| r.ok().map(|v| v as u64);
    Some(AllocatorStats {
        allocated: read(stats::allocated::read())?,
        active: read(stats::active::read())?,
        metadata: read(stats::metadata::read())?,
        resident: read(stats::resident::read())?,
        retained: read(stats::retained::read())?,
    })
}

#[cfg(not(all(target_os = "linux", feature = "alloc-stats")))]
fn allocator_stats() -> Option<AllocatorStats> {
    None
}

#[cfg(test)]
mod stats_tests {
    use super::*;

    /// Runs `attempt` up to five times until it succeeds: the statistics are the
    /// whole process's, and tests on other threads allocate and free meanwhile. A
    /// reader that is wrong fails every attempt.
    pub(super) fn within_noise(attempt: impl Fn() -> Result<(), String>) {
        let mut last = String::new();
        for _ in 0..5 {
            match attempt() {
                Ok(()) => return,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    /// The RSS is read, and grows by what the process touches.
    #[test]
    fn rss_is_read_and_follows_touched_memory() {
        within_noise(|| {
            let before = memory_stats().rss.ok_or("no RSS on Linux")?;
            let v = std::hint::black_box(vec![1u8; 64 << 20]);
            let after = memory_stats().rss.ok_or("no RSS on Linux")?;
            drop(v);
            (after >= before + (48 << 20))
                .then_some(())
                .ok_or(format!("{before} -> {after}"))
        });
    }
}

#[cfg(all(test, target_os = "linux", feature = "jemalloc"))]
mod tests {
    use std::time::{Duration, Instant};

    /// Names of this process's threads.
    fn thread_names() -> Vec<String> {
        let tasks = std::fs::read_dir("/proc/self/task").unwrap();
        tasks
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .collect()
    }

    /// jemalloc is the allocator and has read `malloc_conf`: its purging thread
    /// runs (under glibc, or with the settings not picked up, there is none).
    #[test]
    fn jemalloc_purges_from_a_background_thread() {
        let v = std::hint::black_box(vec![1u8; 1 << 20]);
        drop(v);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let names = thread_names();
            if names.iter().any(|n| n.starts_with("jemalloc_bg_thd")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no jemalloc background thread among {names:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A thread given an arena allocates from it from then on (a new thread otherwise
    /// keeps the one jemalloc gave it, of several per core).
    #[test]
    fn a_thread_takes_the_arena_it_is_given() {
        let (own, target, after) = std::thread::spawn(|| {
            let own = super::thread_arena().expect("jemalloc's thread.arena");
            let target = if own == 0 { 1 } else { 0 };
            super::use_arena(Some(target));
            // Allocations work after the move.
            let v = vec![1u8; 1 << 20];
            assert_eq!(v.iter().map(|b| usize::from(*b)).sum::<usize>(), 1 << 20);
            (own, target, super::thread_arena())
        })
        .join()
        .expect("thread");
        assert_ne!(own, target);
        assert_eq!(after, Some(target));
    }

    /// The C libraries allocate from jemalloc too: `malloc` is jemalloc's, whose
    /// smallest size class is 8 bytes (glibc's smallest block holds 24).
    #[test]
    fn c_code_allocates_from_jemalloc() {
        // SAFETY: a block from malloc, measured and freed once.
        let usable = unsafe {
            let p = libc::malloc(1);
            assert!(!p.is_null());
            let n = libc::malloc_usable_size(p);
            libc::free(p);
            n
        };
        assert_eq!(usable, 8, "malloc is not jemalloc's");
    }

    /// With `alloc-stats`, jemalloc's statistics are read, fresh (the epoch advanced),
    /// and consistent:
    /// 64 MiB allocated and touched shows in `allocated` and `resident`, and leaves
    /// `allocated` again once freed.
    #[cfg(feature = "alloc-stats")]
    #[test]
    fn allocator_statistics_follow_allocations() {
        super::stats_tests::within_noise(|| {
            let stats = || {
                super::memory_stats()
                    .allocator
                    .ok_or("no jemalloc statistics")
            };
            let before = stats()?;
            let ordered = before.allocated > 0
                && before.active >= before.allocated
                && before.resident >= before.active;
            let v = std::hint::black_box(vec![1u8; 64 << 20]);
            let held = stats()?;
            drop(v);
            let after = stats()?;
            (ordered
                && held.allocated >= before.allocated + (64 << 20)
                && held.resident >= 64 << 20
                && after.allocated + (32 << 20) < held.allocated)
                .then_some(())
                .ok_or(format!("{before:?} {held:?} {after:?}"))
        });
    }
}
