//! `murmur` with a counting allocator, to see where a user's memory goes: the same command
//! line as `murmur`, and while it runs, every second, a census of the heap's live
//! allocations by size is written to the file named by `MURMUR_ALLOC_CENSUS` (with the
//! process id appended, so that a master and its agents write apart).
//!
//! ```text
//! MURMUR_ALLOC_CENSUS=/tmp/census cargo run --release --example alloc_census -- run idle.yaml
//! ```
//!
//! A census is JSON: `live_bytes` (what the program asked for and holds), `live_allocs`,
//! `malloc_bytes` (the same allocations as glibc's malloc lays them out: 8 bytes of header,
//! 16-byte steps, 32 bytes at least), and `by_size`: `[size, count]` for every size (in
//! 16-byte steps, each named by its upper bound; the last step is everything over 64 KiB) that has live allocations.
//! `bench/websocket.py --census` compares a census of N idle users with one of 1 user.
//! Measurement only: the stock `murmur` uses the system allocator without counting.

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Size classes of 16 bytes up to 64 KiB; the last one holds everything larger.
const CLASSES: usize = 4097;

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_ALLOCS: AtomicI64 = AtomicI64::new(0);
static BY_CLASS: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];

fn class(size: usize) -> usize {
    size.div_ceil(16).min(CLASSES - 1)
}

fn count(size: usize, sign: i64) {
    LIVE_BYTES.fetch_add(sign * size as i64, Ordering::Relaxed);
    LIVE_ALLOCS.fetch_add(sign, Ordering::Relaxed);
    BY_CLASS[class(size)].fetch_add(sign, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters move.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size(), 1);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size(), 1);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(layout.size(), -1);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(layout.size(), -1);
            count(new_size, 1);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// glibc's chunk for a request of `size` bytes (x86-64): header, 16-byte steps, 32 at least.
fn malloc_chunk(size: usize) -> usize {
    (size + 8).div_ceil(16).max(2) * 16
}

fn census() -> String {
    let mut by_size = Vec::new();
    let mut malloc_bytes = 0i64;
    for (c, n) in BY_CLASS.iter().enumerate() {
        let n = n.load(Ordering::Relaxed);
        if n != 0 {
            by_size.push(format!("[{},{n}]", c * 16));
            malloc_bytes += n * malloc_chunk(c * 16) as i64;
        }
    }
    format!(
        "{{\"live_bytes\":{},\"live_allocs\":{},\"malloc_bytes\":{malloc_bytes},\"by_size\":[{}]}}\n",
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_ALLOCS.load(Ordering::Relaxed),
        by_size.join(",")
    )
}

fn main() -> ExitCode {
    if let Some(path) = std::env::var_os("MURMUR_ALLOC_CENSUS") {
        let mut path = std::path::PathBuf::from(path);
        path.as_mut_os_string()
            .push(format!(".{}", std::process::id()));
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let mut tmp = path.clone();
            tmp.as_mut_os_string().push(".tmp");
            // Written aside and renamed, so that a reader never sees half a census.
            if std::fs::write(&tmp, census()).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        });
    }
    murmuration_agent::cli::main_with(murmuration_agent::registry::Registry::new())
}
