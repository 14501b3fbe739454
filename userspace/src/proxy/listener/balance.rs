//! Which worker accepts a new connection. Each worker has its own socket per listener
//! (`SO_REUSEPORT`); the kernel alone would pick one by a hash of the connection, which spreads
//! connections evenly but not load: long-lived connections pile up where they happened to land.
//! `ebpf/src/reuseport.rs` picks instead the worker with the fewest connections, active or
//! waiting in its socket's accept queue, as the workers and the program count them here
//! ([`Loads`]), in memory shared with the program: a connection costs its worker a few
//! atomics, no syscall. The waiting ones count because a worker that is busy (a burst of TLS
//! handshakes) accepts nothing for a while: its active count stands still while its queue
//! grows, and by that count alone it would get every new connection.
//!
//! `global.worker-balance: hash` (or a kernel or privilege that refuses the program, logged) leaves
//! the kernel's hash in place; the loads are still counted, for the metric.

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, ReusePortSockArray},
    programs::SkReuseport,
};
use floodgate_common::{
    DestKey,
    reuseport::{self, Group, LOAD_SLOTS, MAX_GROUPS, MAX_WORKERS, QUEUED},
};

static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floodgate-reuseport"));

#[derive(Debug, thiserror::Error)]
pub enum BalanceError {
    #[error("loading the reuseport object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the reuseport program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("{0} is missing from the reuseport object")]
    MissingMap(&'static str),
    #[error("mapping the worker loads: {0}")]
    Mmap(std::io::Error),
    #[error("{what} is {n}, more than the {max} the reuseport program balances")]
    TooMany {
        what: &'static str,
        n: usize,
        max: u32,
    },
}

/// Active connections per worker, every listener: in the program's load map when it is
/// loaded, else in memory of this process. Written only by each worker's own thread (an add at
/// accept, a subtract at close), read by the program and the metrics. With the program, also
/// the connections waiting in each worker's socket of each listener (`reuseport::LOAD`).
pub struct Loads {
    slots: NonNull<AtomicU64>,
    len: usize,
    /// The map's slots past the active counts are there (the program reads and counts them).
    queued: bool,
    backing: Backing,
}

enum Backing {
    /// `munmap`ed on drop.
    Mapped { len: usize },
    /// A boxed slice of `len` slots, given back to its box on drop.
    Owned { len: usize },
}

// SAFETY: the slots are atomics, in memory that lives as long as `Loads` (an mmap it unmaps
// on drop, or a boxed slice it frees on drop).
unsafe impl Send for Loads {}
unsafe impl Sync for Loads {}

impl Loads {
    /// Counters of this process only (no program reads them).
    pub fn owned(workers: usize) -> Self {
        let b: Box<[AtomicU64]> = (0..workers.max(1)).map(|_| AtomicU64::new(0)).collect();
        let len = b.len();
        // The pointer keeps the provenance of the whole slice; `Drop` rebuilds the box.
        let slots = NonNull::from(Box::leak(b)).cast::<AtomicU64>();
        Self {
            slots,
            len,
            queued: false,
            backing: Backing::Owned { len },
        }
    }

    /// The load map's memory, shared with the program (the map is created `BPF_F_MMAPABLE`).
    fn mapped(map: &MapData, workers: usize) -> Result<Self, BalanceError> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = (LOAD_SLOTS as usize * size_of::<u64>()).next_multiple_of(page);
        // SAFETY: a shared mapping of the whole map (its size rounded to a page, as the kernel
        // requires), checked for failure below; nothing else maps this memory in this process.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(BalanceError::Mmap(std::io::Error::last_os_error()));
        }
        let slots = NonNull::new(p.cast::<AtomicU64>())
            .ok_or_else(|| BalanceError::Mmap(std::io::Error::other("mmap returned null")))?;
        Ok(Self {
            slots,
            len: workers.clamp(1, MAX_WORKERS as usize),
            queued: true,
            backing: Backing::Mapped { len: bytes },
        })
    }

    fn slot(&self, worker: usize) -> &AtomicU64 {
        // SAFETY: `worker % len` is within the slots, which live as long as `self`.
        unsafe { self.slots.add(worker % self.len).as_ref() }
    }

    /// Worker `worker` took a connection; the guard gives it back when dropped.
    pub fn enter(self: &std::sync::Arc<Self>, worker: usize) -> LoadGuard {
        self.slot(worker).fetch_add(1, Ordering::Relaxed);
        LoadGuard {
            loads: self.clone(),
            worker,
        }
    }

    /// The count of connections waiting at worker `worker`'s socket of listener `listener`;
    /// `None` without the program, or past the map.
    fn queue(&self, listener: usize, worker: usize) -> Option<&AtomicU64> {
        if !self.queued || listener >= MAX_GROUPS as usize || worker >= MAX_WORKERS as usize {
            return None;
        }
        let i = QUEUED as usize + listener * MAX_WORKERS as usize + worker;
        // SAFETY: `i < LOAD_SLOTS`, within the mapping, which lives as long as `self`.
        Some(unsafe { self.slots.add(i).as_ref() })
    }

    /// Connections waiting at each worker's socket of `listener`, as the program counts them.
    pub fn queued(&self, listener: usize) -> Vec<u64> {
        (0..self.len)
            .map(|w| {
                self.queue(listener, w)
                    .map_or(0, |q| q.load(Ordering::Relaxed))
            })
            .collect()
    }

    /// Active connections of each worker.
    pub fn snapshot(&self) -> Vec<u64> {
        (0..self.len)
            .map(|w| self.slot(w).load(Ordering::Relaxed))
            .collect()
    }

    /// For tests and benchmarks: pretend worker `worker` holds `n` connections.
    pub fn set(&self, worker: usize, n: u64) {
        self.slot(worker).store(n, Ordering::Relaxed);
    }
}

impl Drop for Loads {
    fn drop(&mut self) {
        match self.backing {
            // SAFETY: the mapping made in `mapped`, unmapped once; no guard outlives `Loads`
            // (each holds an `Arc` of it).
            Backing::Mapped { len } => unsafe {
                libc::munmap(self.slots.as_ptr().cast(), len);
            },
            // SAFETY: the slice leaked in `owned`, of `len` slots, freed once.
            Backing::Owned { len } => unsafe {
                drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.slots.as_ptr(),
                    len,
                )));
            },
        }
    }
}

/// Worker `worker`'s socket of listener `listener` (its index in the config), where its
/// accept loop counts.
#[derive(Clone)]
pub struct Seat {
    pub loads: std::sync::Arc<Loads>,
    pub worker: usize,
    pub listener: usize,
}

impl Seat {
    /// A connection accepted from this socket: active now, no longer waiting.
    pub fn accepted(&self) -> LoadGuard {
        if let Some(q) = self.loads.queue(self.listener, self.worker) {
            // Never below zero: the count was zeroed (`drained`) while this one waited.
            let _ = q.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        self.loads.enter(self.worker)
    }

    /// This socket's accept queue was found empty.
    pub fn drained(&self) {
        if let Some(q) = self.loads.queue(self.listener, self.worker) {
            // Read first: a busy listener finds it zero already, and the line stays shared.
            if q.load(Ordering::Relaxed) != 0 {
                q.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// One connection counted in its worker's load.
pub struct LoadGuard {
    loads: std::sync::Arc<Loads>,
    worker: usize,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.loads.slot(self.worker).fetch_sub(1, Ordering::Relaxed);
    }
}

/// The reuseport program, attached to every listener's group. Dropping it leaves the program
/// attached: it goes with the sockets, when the process exits.
pub struct Balancer {
    _ebpf: Ebpf,
}

/// `groups[l][w]`: worker `w`'s socket of listener `l` (each listener's sockets bound with
/// `SO_REUSEPORT`, one per worker; none for a listener the program leaves alone). `l` is the
/// listener's [`Seat::listener`].
pub fn attach(
    groups: &[Vec<&TcpListener>],
    workers: usize,
) -> Result<(Balancer, std::sync::Arc<Loads>), BalanceError> {
    let listeners = groups.len();
    if workers > MAX_WORKERS as usize || groups.iter().any(|g| g.len() > MAX_WORKERS as usize) {
        return Err(BalanceError::TooMany {
            what: "global.nbthread",
            n: workers,
            max: MAX_WORKERS,
        });
    }
    if listeners > MAX_GROUPS as usize {
        return Err(BalanceError::TooMany {
            what: "the number of listeners",
            n: listeners,
            max: MAX_GROUPS,
        });
    }
    let mut ebpf = EbpfLoader::new().load(OBJECT)?;
    program(&mut ebpf)?.load()?;
    let map_err = |name| move |source| BalanceError::Map { name, source };
    let loads = match ebpf.map(reuseport::LOAD) {
        Some(aya::maps::Map::Array(data)) => Loads::mapped(data, workers)?,
        _ => return Err(BalanceError::MissingMap(reuseport::LOAD)),
    };
    let mut placed = Vec::new();
    {
        let mut socks: ReusePortSockArray<&mut MapData> = ReusePortSockArray::try_from(
            ebpf.map_mut(reuseport::SOCKETS)
                .ok_or(BalanceError::MissingMap(reuseport::SOCKETS))?,
        )
        .map_err(map_err(reuseport::SOCKETS))?;
        for (l, group) in groups.iter().enumerate() {
            let Some(addr) = group.first().and_then(|s| s.local_addr().ok()) else {
                continue;
            };
            let base = u32::try_from(l).unwrap_or(u32::MAX) * MAX_WORKERS;
            for (w, s) in group.iter().enumerate() {
                socks
                    .set(base + u32::try_from(w).unwrap_or(0), *s, 0)
                    .map_err(map_err(reuseport::SOCKETS))?;
            }
            let workers = u32::try_from(group.len()).unwrap_or(MAX_WORKERS);
            placed.push((key_of(addr), Group { base, workers }));
        }
    }
    {
        let mut group_map: HashMap<&mut MapData, DestKey, Group> = HashMap::try_from(
            ebpf.map_mut(reuseport::GROUPS)
                .ok_or(BalanceError::MissingMap(reuseport::GROUPS))?,
        )
        .map_err(map_err(reuseport::GROUPS))?;
        for (key, group) in &placed {
            group_map
                .insert(key, group, 0)
                .map_err(map_err(reuseport::GROUPS))?;
        }
    }
    // Every socket is in the map before its group runs the program; one attach serves the
    // whole group.
    let program = program(&mut ebpf)?;
    for first in groups.iter().filter_map(|g| g.first()) {
        program.attach(first)?;
    }
    Ok((Balancer { _ebpf: ebpf }, std::sync::Arc::new(loads)))
}

fn program(ebpf: &mut Ebpf) -> Result<&mut SkReuseport, BalanceError> {
    Ok(ebpf
        .program_mut(reuseport::PROGRAM_NAME)
        .ok_or(BalanceError::MissingMap(reuseport::PROGRAM_NAME))?
        .try_into()?)
}

/// The group key of sockets bound to `addr`: what the program reads from the group's socket.
fn key_of(addr: SocketAddr) -> DestKey {
    match addr {
        SocketAddr::V4(a) => {
            reuseport::group_key(false, a.ip().to_ipv6_mapped().octets(), a.port())
        }
        SocketAddr::V6(a) => reuseport::group_key(true, a.ip().octets(), a.port()),
    }
}

/// `floodgate_worker_connections{worker}`, read from the loads at each scrape.
pub struct LoadCollector {
    loads: std::sync::Arc<Loads>,
    gauge: prometheus::IntGaugeVec,
}

impl LoadCollector {
    pub fn new(loads: std::sync::Arc<Loads>) -> Result<Self, prometheus::Error> {
        Ok(Self {
            loads,
            gauge: prometheus::IntGaugeVec::new(
                prometheus::Opts::new(
                    "floodgate_worker_connections",
                    "Connections each worker thread holds (what global.worker-balance: load balances)",
                ),
                &["worker"],
            )?,
        })
    }
}

impl prometheus::core::Collector for LoadCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        for (w, n) in self.loads.snapshot().into_iter().enumerate() {
            self.gauge
                .with_label_values(&[&w.to_string()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_connection_counts_in_its_worker_until_its_guard_drops() {
        let loads = Arc::new(Loads::owned(3));
        let a = loads.enter(1);
        let b = loads.enter(1);
        let c = loads.enter(2);
        assert_eq!(loads.snapshot(), [0, 2, 1]);
        drop((b, c));
        assert_eq!(loads.snapshot(), [0, 1, 0]);
        drop(a);
        assert_eq!(loads.snapshot(), [0, 0, 0]);
        // A worker index past the slots wraps rather than writing out of bounds.
        let _d = loads.enter(4);
        assert_eq!(loads.snapshot(), [0, 1, 0]);
    }

    #[test]
    fn group_keys_are_what_the_program_reads_from_the_socket() {
        let v4 = key_of("10.1.2.3:8443".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(v4.family, floodgate_common::FAMILY_V4);
        assert_eq!(v4.port, 8443);
        assert_eq!(v4.addr[10..], [0xff, 0xff, 10, 1, 2, 3]);
        let any6 = key_of("[::]:80".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(
            (any6.family, any6.port, any6.addr),
            (floodgate_common::FAMILY_V6, 80, [0; 16])
        );
    }
}
