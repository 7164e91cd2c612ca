//! Page size of weight mappings.
//!
//! Every forward pass streams a model's weights, and at 4 KiB per page each page costs a TLB miss
//! whose page-table walk may itself miss the caches. Measured on a 2-core Xeon VM (C probes, one
//! byte per cache line): reading SmolLM2's 94 MB GGUF through a mapping took 7.5 ms in 4 KiB pages
//! and 5.8 ms in 2 MiB pages, and a 16 MB buffer read after 50 ms of idleness 1.6 vs 1.1 ms. End to
//! end the gain is smaller, since a step also computes: `bench engine`, seven interleaved pairs of
//! runs, medians 639 vs 603 tok/s at 16 sequences, 1096 vs 1078 tok/s prefill, batch-1 decode
//! within the host's noise; `route()` after an idle pause did not change measurably. The KV cache
//! gets the same advice ([`advise_buffer`]): with a 2000-token context (three interleaved pairs of
//! `bench engine --prefill-tokens 2000` runs, weights and cache together) batch-1 decode had medians
//! of 85.5 vs 76.9 tok/s and four sequences 341 vs 329 tok/s, prefill unchanged.
//!
//! On Linux, weight mappings therefore ask for transparent huge pages (`MADV_HUGEPAGE`). A file's
//! cached pages keep the size they were read in with, so before mapping, the file's clean cached
//! pages that no process maps are dropped (`POSIX_FADV_DONTNEED`) and the mapping reads them back
//! (`MADV_POPULATE_READ`) in 2 MiB pages: one read of the file from disk at start-up, for every
//! read of the weights afterwards. `SWITCHYARD_HUGE_PAGES=0` maps weights in 4 KiB pages instead
//! (`MADV_NOHUGEPAGE`), for comparisons. Where the kernel's transparent huge pages are `never`, or
//! off Linux, nothing is asked.

use memmap2::{Mmap, MmapMut};
use std::fs::File;

/// The page size weights are mapped with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightPages {
    /// 2 MiB transparent huge pages where the kernel grants them (the default on Linux).
    Huge,
    /// The base 4 KiB pages (`SWITCHYARD_HUGE_PAGES=0`).
    Base,
    /// Whatever the kernel does by default (off Linux, or transparent huge pages `never`).
    KernelDefault,
}

/// The page size chosen by the environment and the kernel (read once per process).
pub fn weight_pages() -> WeightPages {
    static CHOSEN: std::sync::OnceLock<WeightPages> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        if !cfg!(target_os = "linux") {
            return WeightPages::KernelDefault;
        }
        let setting = std::env::var("SWITCHYARD_HUGE_PAGES").ok();
        let kernel = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok();
        choose(setting.as_deref(), kernel.as_deref())
    })
}

/// The page size for a `SWITCHYARD_HUGE_PAGES` setting and the kernel's transparent huge page mode
/// (the contents of `/sys/kernel/mm/transparent_hugepage/enabled`, absent without THP).
fn choose(setting: Option<&str>, kernel: Option<&str>) -> WeightPages {
    match setting {
        Some("0" | "off" | "false") => return WeightPages::Base,
        Some("1" | "on" | "true") | None => {}
        Some(other) => tracing::warn!("SWITCHYARD_HUGE_PAGES={other:?} is not 0 or 1; using 1"),
    }
    match kernel {
        Some(mode) if !mode.contains("[never]") => WeightPages::Huge,
        _ => WeightPages::KernelDefault,
    }
}

/// Maps `file` read-only with the page size of [`weight_pages`].
pub(crate) fn map_file(file: &File) -> std::io::Result<Mmap> {
    map_file_with(file, weight_pages())
}

fn map_file_with(file: &File, pages: WeightPages) -> std::io::Result<Mmap> {
    if pages == WeightPages::Huge {
        drop_cached_pages(file);
    }
    // SAFETY: the mapping is read-only; like every mmap-based loader we rely on the file not being
    // truncated while it is in use.
    let mmap = unsafe { Mmap::map(file) }?;
    // Read the file in now, through the advised mapping, rather than on the first forward pass.
    advise(mmap.as_ptr(), mmap.len(), pages, Populate::Yes);
    Ok(mmap)
}

/// A zeroed anonymous buffer of `len` bytes with the page size of [`weight_pages`], for weights
/// built at load time (converted or quantized ones).
pub(crate) fn anonymous(len: usize) -> std::io::Result<MmapMut> {
    anonymous_with(len, weight_pages())
}

fn anonymous_with(len: usize, pages: WeightPages) -> std::io::Result<MmapMut> {
    // A whole number of 2 MiB pages: Linux aligns such a mapping to that size, so every byte of it
    // can sit in a huge page (the last one's unused tail costs at most 2 MiB of memory).
    const HUGE: usize = 2 << 20;
    let len = match pages {
        WeightPages::Huge => len.max(1).next_multiple_of(HUGE),
        _ => len.max(1),
    };
    let map = MmapMut::map_anon(len)?;
    advise(map.as_ptr(), map.len(), pages, Populate::No);
    Ok(map)
}

/// Advises the page size of [`weight_pages`] for a large heap buffer that has not been written yet
/// (the KV cache: attention reads it block by block, scattered over the buffer). Only the whole
/// 2 MiB ranges inside it can get huge pages.
pub(crate) fn advise_buffer<T>(buffer: &mut [T]) {
    advise_buffer_with(buffer, weight_pages())
}

fn advise_buffer_with<T>(buffer: &mut [T], pages: WeightPages) {
    let len = std::mem::size_of_val(buffer);
    advise(buffer.as_ptr().cast(), len, pages, Populate::No);
}

/// Whether to fault a mapping's pages in right away.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Populate {
    Yes,
    No,
}

/// Applies the advice for `pages` to the whole 4 KiB pages inside the `len` bytes at `start`, a
/// region the caller owns. Advice is a hint: a kernel that refuses it (an old one, without
/// `MADV_POPULATE_READ`) is only logged.
fn advise(start: *const u8, len: usize, pages: WeightPages, populate: Populate) {
    #[cfg(target_os = "linux")]
    {
        let advice: &[libc::c_int] = match (pages, populate) {
            (WeightPages::Huge, Populate::Yes) => &[libc::MADV_HUGEPAGE, libc::MADV_POPULATE_READ],
            (WeightPages::Huge, Populate::No) => &[libc::MADV_HUGEPAGE],
            (WeightPages::Base, _) => &[libc::MADV_NOHUGEPAGE],
            (WeightPages::KernelDefault, _) => &[],
        };
        const PAGE: usize = 4096;
        let start = start as usize;
        let (first, last) = (start.next_multiple_of(PAGE), (start + len) / PAGE * PAGE);
        if last <= first {
            return;
        }
        for &a in advice {
            // SAFETY: the range lies inside the caller's region; the advice changes how its pages
            // are backed (or faults them in), never their contents.
            let r = unsafe { libc::madvise(first as *mut libc::c_void, last - first, a) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                tracing::debug!("madvise({a}) on {} weight bytes: {e}", last - first);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, len, pages, populate);
}

#[cfg(target_os = "linux")]
fn drop_cached_pages(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a file descriptor we own; it only drops clean, unmapped pages.
    let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        tracing::debug!("posix_fadvise(DONTNEED) on a weight file: error {r}");
    }
}

#[cfg(not(target_os = "linux"))]
fn drop_cached_pages(_file: &File) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_setting_and_the_kernel_choose_the_page_size() {
        let madvise = Some("always [madvise] never\n");
        assert_eq!(choose(None, madvise), WeightPages::Huge);
        assert_eq!(
            choose(Some("1"), Some("[always] madvise never")),
            WeightPages::Huge
        );
        assert_eq!(choose(Some("0"), madvise), WeightPages::Base);
        assert_eq!(choose(Some("off"), madvise), WeightPages::Base);
        assert_eq!(
            choose(None, Some("always madvise [never]")),
            WeightPages::KernelDefault
        );
        assert_eq!(choose(None, None), WeightPages::KernelDefault);
        // An unknown value is warned about and read as the default.
        assert_eq!(choose(Some("yes please"), madvise), WeightPages::Huge);
    }

    /// The `VmFlags` line of the mapping that holds `addr`, from `/proc/self/smaps`.
    #[cfg(target_os = "linux")]
    fn vm_flags(addr: *const u8) -> String {
        let addr = addr as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let holds = |header: &str| {
            let range = header.split(' ').next().unwrap_or("");
            let Some((a, b)) = range.split_once('-') else {
                return false;
            };
            let parse = |x| usize::from_str_radix(x, 16).ok();
            matches!((parse(a), parse(b)), (Some(a), Some(b)) if a <= addr && addr < b)
        };
        let mut lines = smaps.lines().skip_while(|l| !holds(l));
        lines
            .find(|l| l.starts_with("VmFlags:"))
            .unwrap_or_else(|| panic!("no mapping holds {addr:x}"))
            .to_string()
    }

    #[test]
    fn mappings_carry_the_advice_for_their_page_size() {
        let mut file = tempfile();
        file.write_all(&vec![7u8; 3 << 20]).unwrap();
        let huge = map_file_with(&file, WeightPages::Huge).unwrap();
        let base = map_file_with(&file, WeightPages::Base).unwrap();
        assert!(huge.iter().chain(base.iter()).all(|&b| b == 7));
        let anon = anonymous_with(100, WeightPages::Huge).unwrap();
        assert_eq!(anon.len(), 2 << 20, "a whole huge page");
        assert!(anon.iter().all(|&b| b == 0));
        #[cfg(target_os = "linux")]
        {
            // `hg` is MADV_HUGEPAGE, `nh` MADV_NOHUGEPAGE.
            assert!(
                vm_flags(huge.as_ptr()).contains(" hg"),
                "{}",
                vm_flags(huge.as_ptr())
            );
            assert!(
                vm_flags(base.as_ptr()).contains(" nh"),
                "{}",
                vm_flags(base.as_ptr())
            );
            assert!(vm_flags(anon.as_ptr()).contains(" hg"));
        }
    }

    #[test]
    fn a_large_buffer_carries_the_advice_for_its_page_size() {
        for (pages, flag) in [(WeightPages::Huge, " hg"), (WeightPages::Base, " nh")] {
            let mut buffer = vec![0f32; 4 << 20];
            advise_buffer_with(&mut buffer, pages);
            buffer.iter_mut().step_by(1024).for_each(|x| *x = 1.0);
            assert_eq!(buffer.iter().filter(|&&x| x == 1.0).count(), 4 << 10);
            #[cfg(target_os = "linux")]
            {
                let middle = buffer[buffer.len() / 2..].as_ptr().cast::<u8>();
                assert!(vm_flags(middle).contains(flag), "{}", vm_flags(middle));
            }
            #[cfg(not(target_os = "linux"))]
            let _ = flag;
        }
        // A buffer smaller than a page is left alone.
        advise_buffer_with(&mut [0u8; 16], WeightPages::Huge);
    }

    fn tempfile() -> File {
        ::tempfile::tempfile().unwrap()
    }
}
