//! The kernel side, from userspace: load the embedded XDP object, attach it, pin its maps, and
//! keep the maps it reads (config, listeners, CIDRs, capacity, heartbeat) up to date.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use crate::xdp::verified::VerifiedFilter;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, MapInfo, lpm_trie::Key},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use floodgate_common::{
    Capacity, DestKey, FAMILY_V4, FAMILY_V6, FLAG_ALLOW_MODE, FLAG_CAPACITY, FLAG_DENY_V4,
    FLAG_DENY_V6, FLAG_FLOW_TABLE, ListenerId, ListenerKey, PROGRAM_NAME, SrcKey, XdpConfig, maps,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{self, XdpMode as ConfigMode};

/// The XDP object built from `ebpf/` by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floodgate"));

/// bpffs holds only BPF objects, so where and how XDP is attached is recorded here, one file per
/// pin directory, for `floodgate stats`.
const STATE_DIR: &str = "/run/floodgate";

pub fn attach_file(pin_dir: &Path) -> PathBuf {
    let name = pin_dir
        .to_string_lossy()
        .trim_matches('/')
        .replace('/', "_");
    Path::new(STATE_DIR).join(format!("{name}.attach.json"))
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "loading the XDP object failed (are you root, or do you have CAP_BPF and CAP_NET_ADMIN?): {0}"
    )]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no {what} named {name}")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error("the kernel verifier refused the XDP program: {0}")]
    Verify(#[source] aya::programs::ProgramError),
    #[error("cannot attach XDP to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("pinning under {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
    #[error("XDP link on {iface}: {reason}")]
    Link { iface: String, reason: String },
    #[error("{0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("walking the flow table: {0}")]
    Batch(#[from] crate::xdp::batch::BatchError),
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// Where and how the program is attached; written to the pin directory for `floodgate stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attachment {
    pub interface: String,
    /// `native` or `generic`.
    pub mode: String,
    /// What the config asked for: `native`, `generic` or `auto` (native, else generic).
    #[serde(default)]
    pub requested: String,
    /// The interface's counter slot in FG_STATS; 0 when it shares the `other` slot.
    #[serde(default)]
    pub slot: u32,
    pub program_id: u32,
    /// The floodgate process that attached it.
    pub pid: u32,
}

/// Capacity of one listener, as the proxy sees it. It admits while `active < maxconn` and
/// `queue_room > 0`.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLoad {
    pub id: ListenerId,
    /// Connections the process holds (global maxconn counts them all).
    pub active: u32,
    pub maxconn: u32,
    /// Room behind the listener: `u32::MAX` while some backend has a server with room, else the
    /// largest free queue room among its backends.
    pub queue_room: u32,
}

pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    links: Vec<HeldLink>,
    pub attachments: Vec<Attachment>,
    /// `FG_LISTENERS` slots this process set, so a reload can clear the ones it drops.
    listener_slots: Vec<u32>,
    /// The listeners' binds, for the `FG_DESTS` of wildcard ones as the node's addresses change.
    binds: Vec<SocketAddr>,
    /// `FG_DESTS` as last written.
    dests: std::collections::HashMap<DestKey, u32>,
    /// The node's addresses, when set by hand (tests) rather than read from the interfaces.
    fixed_addrs: Option<Vec<IpAddr>>,
    /// The config last written, for `set_pressure`.
    cfg: Option<config::Xdp>,
    /// Whether the SYN rate limits are engaged (`pressure.rs`), and the global budget an
    /// `auto` one stands at.
    pressure: Pressured,
    /// Whether XDP may answer with SYN cookies, and the sysctl held for it.
    cookies: Cookies,
    /// `FG_VERIFIED_BF` as written, and when it was last rebuilt from `FG_VERIFIED`.
    verified_filter: VerifiedFilter,
    filter_rebuilt: Option<std::time::Instant>,
}

/// The kernel side of XDP SYN cookies (`syncookies.rs`).
#[derive(Debug)]
enum Cookies {
    /// `BPF_PROG_TEST_RUN` tests and benchmarks: the flag follows pressure and
    /// `xdp.syn-cookies`; the sysctl, which is the test machine's, is left alone.
    Unmanaged,
    /// Attached: `tcp_syncookies` is 2 while held.
    Managed(Option<crate::xdp::syncookies::Always>),
}

/// The pressure state userspace publishes in `FG_CONFIG`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressured {
    pub engaged: bool,
    /// SYNs per second of `syn-rate.global: auto`.
    pub auto_global: u32,
}

impl Dataplane {
    /// A loaded object, nothing configured or attached yet.
    fn new(ebpf: Ebpf, pin_dir: PathBuf, cookies: Cookies) -> Self {
        Self {
            ebpf,
            pin_dir,
            links: Vec::new(),
            attachments: Vec::new(),
            listener_slots: Vec::new(),
            binds: Vec::new(),
            dests: std::collections::HashMap::new(),
            fixed_addrs: None,
            cfg: None,
            pressure: Pressured::default(),
            cookies,
            verified_filter: VerifiedFilter::default(),
            filter_rebuilt: None,
        }
    }

    /// Loads and configures the program without pinning or attaching it, for
    /// `BPF_PROG_TEST_RUN` tests and benchmarks.
    pub fn load_unattached(
        cfg: &config::Xdp,
        binds: &[SocketAddr],
    ) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(maps::SRC_BUCKETS, cfg.syn_rate.source_table_size)
            .map_max_entries(maps::FLOWS, cfg.flow_table_size)
            .map_max_entries(maps::VERIFIED, cfg.verified_table_size);
        let ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
        let mut dp = Self::new(ebpf, PathBuf::new(), Cookies::Unmanaged);
        dp.configure(cfg, binds)?;
        dp.program()?.load().map_err(DataplaneError::Verify)?;
        Ok(dp)
    }

    /// The loaded program and its maps, for tests and benchmarks.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Loads, configures and attaches the program. Kernel-state maps whose pins already exist
    /// with the same layout are reused, so counters, buckets and flows survive a restart.
    pub fn start(cfg: &config::Xdp, binds: &[SocketAddr]) -> Result<Self, DataplaneError> {
        std::fs::create_dir_all(&cfg.pin_dir).map_err(|e| DataplaneError::Pin {
            path: cfg.pin_dir.clone(),
            reason: format!("{e} (is bpffs mounted on /sys/fs/bpf?)"),
        })?;
        let sizes = [
            (maps::SRC_BUCKETS, cfg.syn_rate.source_table_size),
            (maps::FLOWS, cfg.flow_table_size),
            (maps::VERIFIED, cfg.verified_table_size),
        ];
        let pin_paths: Vec<(&'static str, PathBuf)> = maps::ALL
            .iter()
            .map(|m| (*m, cfg.pin_dir.join(m)))
            .collect();
        for (name, path) in &pin_paths {
            if maps::KERNEL_STATE.contains(name) {
                let want = sizes.iter().find(|(n, _)| n == name).map(|(_, s)| *s);
                drop_incompatible_pin(name, path, want);
            } else {
                // Userspace-owned: recreated empty and rewritten from this config.
                let _ = std::fs::remove_file(path);
            }
        }
        let mut loader = EbpfLoader::new();
        for (name, size) in sizes {
            loader.map_max_entries(name, size);
        }
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => spawn_kernel_logger(logger),
            Err(e) => warn!(error = %e, "XDP program logs are unavailable"),
        }

        let mut dp = Self::new(ebpf, cfg.pin_dir.clone(), Cookies::Managed(None));
        if cfg.syn_cookies == config::SynCookies::Auto && !pressure_on(cfg, Pressured::default()) {
            crate::xdp::syncookies::reset_leftover();
        }
        dp.configure(cfg, binds)?;
        // A reused FG_VERIFIED keeps its sources across the restart; the filter in front of it
        // is new and empty until rebuilt, and would hide them.
        dp.rebuild_verified_filter(cfg.verified_ttl.0)?;
        dp.attach(cfg)?;
        dp.map_iface_slots()?;
        dp.write_attach_file();
        Ok(dp)
    }

    /// Gives each attached interface its own counter slot (config order, from 1). Two
    /// interfaces whose ifindexes share a bucket, or more than MAX_IFACES - 1 of them: the later
    /// ones are counted under slot 0 (`other`), and the totals stay exact.
    fn map_iface_slots(&mut self) -> Result<(), DataplaneError> {
        use floodgate_common::{IFACE_BUCKETS, IfaceSlot, MAX_IFACES, iface_bucket};
        let mut taken: Vec<(u32, IfaceSlot)> = Vec::new();
        let mut slots = Vec::with_capacity(self.attachments.len());
        for (i, a) in self.attachments.iter().enumerate() {
            let slot = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let name = std::ffi::CString::new(a.interface.clone()).unwrap_or_default();
            // SAFETY: a NUL-terminated name we own.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            let bucket = iface_bucket(ifindex);
            if slot >= MAX_IFACES || ifindex == 0 || taken.iter().any(|(b, _)| *b == bucket) {
                warn!(interface = %a.interface, "no counter slot of its own: counted under `other`");
                slots.push(0);
                continue;
            }
            taken.push((bucket, IfaceSlot { ifindex, slot }));
            slots.push(slot);
        }
        let mut table: aya::maps::Array<_, IfaceSlot> = self.map_mut(maps::IFACE_SLOTS)?;
        for b in 0..IFACE_BUCKETS {
            let entry = taken
                .iter()
                .find(|(bucket, _)| *bucket == b)
                .map_or(IfaceSlot::default(), |(_, s)| *s);
            table
                .set(b, entry, 0)
                .map_err(|source| DataplaneError::Map {
                    map: maps::IFACE_SLOTS,
                    source,
                })?;
        }
        for (a, s) in self.attachments.iter_mut().zip(slots) {
            a.slot = s;
        }
        Ok(())
    }

    pub fn program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        let prog = self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(DataplaneError::Missing {
                what: "program",
                name: PROGRAM_NAME,
            })?;
        Ok(prog.try_into()?)
    }

    fn attach(&mut self, cfg: &config::Xdp) -> Result<(), DataplaneError> {
        // The previous instance's record tells which mode its pinned links are in; removed now
        // so that a record on disk always describes the running program.
        let record = attach_file(&self.pin_dir);
        let previous: Vec<Attachment> = std::fs::read(&record)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let _ = std::fs::remove_file(&record);
        let prog = self.program()?;
        prog.load().map_err(DataplaneError::Verify)?;
        let program_id = prog.info()?.id();
        for iface in &cfg.interfaces {
            let pin = self.pin_dir.join(format!("link_{iface}"));
            let before = previous
                .iter()
                .find(|a| &a.interface == iface)
                .map(|a| a.mode.clone());
            let wanted = match cfg.mode {
                ConfigMode::Native => Some("native"),
                ConfigMode::Generic => Some("generic"),
                ConfigMode::Auto => None,
            };
            let mode = match (PinnedLink::from_pin(&pin), &before) {
                // A link pinned by a previous floodgate, in a mode this config accepts: swap the
                // program under it atomically, so the interface is never without one.
                (Ok(link), Some(mode)) if wanted.is_none_or(|w| w == mode) => {
                    let mode = mode.clone();
                    let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| {
                        DataplaneError::Link {
                            iface: iface.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                    let id = self.program()?.attach_to_link(link)?;
                    self.hold_link(iface, id, &pin, true)?;
                    info!(interface = %iface, mode, program_id, "XDP program replaced atomically on the pinned link");
                    mode
                }
                (Ok(link), _) => {
                    warn!(interface = %iface, "pinned XDP link in another mode: detaching it to attach anew");
                    drop(link.unpin());
                    self.attach_new(cfg.mode, iface, &pin)?
                }
                (Err(_), _) => self.attach_new(cfg.mode, iface, &pin)?,
            };
            info!(interface = %iface, mode, program_id, "XDP attached");
            self.attachments.push(Attachment {
                interface: iface.clone(),
                mode,
                requested: wanted.unwrap_or("auto").to_owned(),
                slot: 0,
                program_id,
                pid: std::process::id(),
            });
        }
        self.detach_leftovers(&cfg.interfaces);
        Ok(())
    }

    /// Links pinned by an earlier floodgate (killed, or stopped with `keep-attached-on-exit`)
    /// on interfaces this config no longer names: unpinned, which detaches their program, so a
    /// node runs XDP only where the config says.
    fn detach_leftovers(&self, interfaces: &[String]) {
        let Ok(entries) = std::fs::read_dir(&self.pin_dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(iface) = name.to_str().and_then(|n| n.strip_prefix("link_")) else {
                continue;
            };
            if interfaces.iter().any(|i| i == iface) {
                continue;
            }
            match PinnedLink::from_pin(e.path()) {
                Ok(link) => match link.unpin() {
                    Ok(_) => {
                        warn!(interface = %iface, "XDP link left by an earlier floodgate on an interface no longer configured: detached");
                    }
                    Err(err) => {
                        warn!(interface = %iface, error = %err, "cannot detach a leftover XDP link");
                    }
                },
                Err(_) => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    fn attach_new(
        &mut self,
        mode: ConfigMode,
        iface: &str,
        pin: &Path,
    ) -> Result<String, DataplaneError> {
        let (id, mode) = match mode {
            ConfigMode::Native => (
                attach_one(self.program()?, iface, XdpMode::Driver)?,
                "native",
            ),
            ConfigMode::Generic => (attach_one(self.program()?, iface, XdpMode::Skb)?, "generic"),
            ConfigMode::Auto => match attach_one(self.program()?, iface, XdpMode::Driver) {
                Ok(id) => (id, "native"),
                Err(e) => {
                    warn!(interface = %iface, error = %e, "native XDP refused, falling back to generic mode");
                    (attach_one(self.program()?, iface, XdpMode::Skb)?, "generic")
                }
            },
        };
        self.hold_link(iface, id, pin, false)?;
        Ok(mode.to_owned())
    }

    /// Pins a bpf_link so a later floodgate can replace the program on it. A netlink
    /// attachment (kernels without bpf_link for XDP) cannot be pinned: it stays with the
    /// program and is detached when this process exits.
    fn hold_link(
        &mut self,
        iface: &str,
        id: XdpLinkId,
        pin: &Path,
        pinned: bool,
    ) -> Result<(), DataplaneError> {
        let link = self.program()?.take_link(id)?;
        match FdLink::try_from(link) {
            Ok(fd) if pinned => {
                drop(fd);
                let link = PinnedLink::from_pin(pin).map_err(|e| DataplaneError::Link {
                    iface: iface.to_owned(),
                    reason: e.to_string(),
                })?;
                self.links.push(HeldLink::Pinned(link));
            }
            Ok(fd) => {
                let link = fd.pin(pin).map_err(|e| DataplaneError::Link {
                    iface: iface.to_owned(),
                    reason: e.to_string(),
                })?;
                self.links.push(HeldLink::Pinned(link));
            }
            Err(_) => {
                warn!(interface = %iface, "XDP attached through netlink: the link cannot be pinned, a restart will detach and reattach");
                self.links.push(HeldLink::Unpinnable);
            }
        }
        Ok(())
    }

    /// Writes everything the program reads from config. Called at start and on reload.
    pub fn configure(
        &mut self,
        cfg: &config::Xdp,
        binds: &[SocketAddr],
    ) -> Result<(), DataplaneError> {
        let cookies = self.hold_cookies(cfg, self.pressure);
        let xdp_cfg = xdp_config(cfg, self.pressure, cookies);
        // Order matters on reload, so the program never reads a flag ahead of its data: a CIDR
        // flag turning off goes off first (allow mode off must never leave an emptied allow
        // list enforced), then the tries change, and a flag turning on goes on last.
        let cidr_flags = FLAG_ALLOW_MODE
            | FLAG_DENY_V4
            | FLAG_DENY_V6
            | floodgate_common::FLAG_TRUSTED_V4
            | floodgate_common::FLAG_TRUSTED_V6;
        let mut arr: Array<_, XdpConfig> = self.map_mut(maps::CONFIG)?;
        let old_flags = arr.get(&0, 0).map_or(0, |c| c.flags);
        let narrowed = XdpConfig {
            flags: (xdp_cfg.flags & !cidr_flags) | (xdp_cfg.flags & old_flags & cidr_flags),
            ..xdp_cfg
        };
        arr.set(0, narrowed, 0).map_err(map_err(maps::CONFIG))?;
        self.sync_cidrs(maps::DENY_V4, maps::DENY_V6, &cfg.deny)?;
        self.sync_cidrs(maps::ALLOW_V4, maps::ALLOW_V6, &cfg.allow)?;
        self.sync_cidrs(maps::TRUSTED_V4, maps::TRUSTED_V6, &cfg.trusted)?;
        self.cfg = Some(cfg.clone());
        if !cookies {
            self.release_cookies();
        }

        let previous = std::mem::take(&mut self.listener_slots);
        let mut listeners: Array<_, u32> = self.map_mut(maps::LISTENERS)?;
        let mut wanted = Vec::new();
        for (id, bind) in binds.iter().enumerate() {
            let id = ListenerId::try_from(id).unwrap_or(ListenerId::MAX);
            for key in listener_keys(*bind) {
                listeners
                    .set(key.slot(), id + 1, 0)
                    .map_err(map_err(maps::LISTENERS))?;
                wanted.push(key.slot());
            }
        }
        for slot in previous.iter().filter(|s| !wanted.contains(s)) {
            listeners
                .set(*slot, 0, 0)
                .map_err(map_err(maps::LISTENERS))?;
        }
        self.listener_slots = wanted;
        self.binds = binds.to_vec();
        self.sync_dests()?;

        let mut arr: Array<_, XdpConfig> = self.map_mut(maps::CONFIG)?;
        arr.set(0, xdp_cfg, 0).map_err(map_err(maps::CONFIG))?;
        Ok(())
    }

    /// Makes the tries hold exactly `nets`: stale entries are removed before new ones are
    /// added, so a trie never holds more than the larger of the two lists (a full trie
    /// replaced by another full one fits), and an entry in both is never absent.
    fn sync_cidrs(
        &mut self,
        v4: &'static str,
        v6: &'static str,
        nets: &[IpNet],
    ) -> Result<(), DataplaneError> {
        let mut t4: LpmTrie<_, [u8; 4], u32> = self.map_mut(v4)?;
        let want4: Vec<Key<[u8; 4]>> = nets
            .iter()
            .filter_map(|n| match n.trunc() {
                IpNet::V4(n) => Some(Key::new(u32::from(n.prefix_len()), n.addr().octets())),
                IpNet::V6(_) => None,
            })
            .collect();
        sync_trie(&mut t4, &want4).map_err(map_err(v4))?;
        let mut t6: LpmTrie<_, [u8; 16], u32> = self.map_mut(v6)?;
        let want6: Vec<Key<[u8; 16]>> = nets
            .iter()
            .filter_map(|n| match n.trunc() {
                IpNet::V6(n) => Some(Key::new(u32::from(n.prefix_len()), n.addr().octets())),
                IpNet::V4(_) => None,
            })
            .collect();
        sync_trie(&mut t6, &want6).map_err(map_err(v6))
    }

    /// Removes flows idle for longer than `idle` (the LRU only evicts under pressure). Runs in
    /// userspace every few seconds off the serving threads, with batched syscalls: thousands
    /// of flows per call (`batch.rs`).
    pub fn age_flows(&mut self, idle: std::time::Duration) -> Result<Aged, DataplaneError> {
        // The program stamps flows with the coarse monotonic clock, a tick behind this one at
        // most: negligible against an idle timeout of minutes.
        let now = monotonic_ns();
        let idle = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        let fd = self.hash_fd(maps::FLOWS)?;
        let mut seen = 0u64;
        let mut stale = Vec::new();
        crate::xdp::batch::for_each::<floodgate_common::FlowKey, floodgate_common::FlowState>(
            fd,
            |k, f| {
                seen += 1;
                if now.saturating_sub(f.last_ns) > idle {
                    stale.push(*k);
                }
            },
        )?;
        let removed = crate::xdp::batch::delete(fd, &stale)?;
        Ok(Aged {
            removed,
            live: seen.saturating_sub(stale.len() as u64),
        })
    }

    /// The fd of hash map `name`, for batched walks.
    fn hash_fd(&self, name: &'static str) -> Result<std::os::fd::BorrowedFd<'_>, DataplaneError> {
        match self.ebpf.map(name) {
            Some(aya::maps::Map::LruHashMap(d) | aya::maps::Map::HashMap(d)) => {
                Ok(std::os::fd::AsFd::as_fd(d.fd()))
            }
            Some(_) => Err(DataplaneError::Missing {
                what: "hash map",
                name,
            }),
            None => Err(DataplaneError::Missing { what: "map", name }),
        }
    }

    /// Marks sources the kernel accepted connections from as verified (not spoofed). Their
    /// filter bits are written first: an entry the filter does not cover would be invisible.
    pub fn verify(
        &mut self,
        sources: impl IntoIterator<Item = IpAddr>,
    ) -> Result<(), DataplaneError> {
        let addrs: Vec<[u8; 16]> = sources
            .into_iter()
            .map(|ip| match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            })
            .collect();
        if addrs.is_empty() {
            return Ok(());
        }
        let changed: Vec<(u32, u64)> = addrs
            .iter()
            .filter_map(|a| self.verified_filter.insert(a))
            .collect();
        self.write_filter_words(&changed)?;
        let mut map: aya::maps::HashMap<_, SrcKey, u64> = self.map_mut(maps::VERIFIED)?;
        let now = monotonic_ns();
        for addr in addrs {
            map.insert(SrcKey { addr }, now, 0)
                .map_err(map_err(maps::VERIFIED))?;
        }
        Ok(())
    }

    /// Rebuilds `FG_VERIFIED_BF` from `FG_VERIFIED`'s live entries once per `ttl`, so that the
    /// bits of expired and evicted sources do not pile up into a filter that passes everything.
    pub fn refresh_verified_filter(
        &mut self,
        ttl: std::time::Duration,
    ) -> Result<(), DataplaneError> {
        if self.filter_rebuilt.is_some_and(|at| at.elapsed() < ttl) {
            return Ok(());
        }
        self.rebuild_verified_filter(ttl)
    }

    fn rebuild_verified_filter(&mut self, ttl: std::time::Duration) -> Result<(), DataplaneError> {
        let now = monotonic_ns();
        let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        let fd = self.hash_fd(maps::VERIFIED)?;
        let mut live = Vec::new();
        crate::xdp::batch::for_each::<SrcKey, u64>(fd, |k, at| {
            if now.saturating_sub(*at) < ttl_ns {
                live.push(k.addr);
            }
        })?;
        let changed = self.verified_filter.rebuild(&live);
        self.write_filter_words(&changed)?;
        self.filter_rebuilt = Some(std::time::Instant::now());
        Ok(())
    }

    fn write_filter_words(&mut self, words: &[(u32, u64)]) -> Result<(), DataplaneError> {
        if words.is_empty() {
            return Ok(());
        }
        let mut filter: Array<_, u64> = self.map_mut(maps::VERIFIED_FILTER)?;
        for (i, w) in words {
            filter
                .set(*i, *w, 0)
                .map_err(map_err(maps::VERIFIED_FILTER))?;
        }
        Ok(())
    }

    /// Publishes listener capacity and refreshes the heartbeat; the program fails open when the
    /// heartbeat goes stale.
    pub fn publish(&mut self, loads: &[ListenerLoad]) -> Result<(), DataplaneError> {
        let mut cap: Array<_, Capacity> = self.map_mut(maps::CAPACITY)?;
        for l in loads {
            let admit = u32::from(l.active < l.maxconn && l.queue_room > 0);
            let c = Capacity {
                admit,
                active: l.active,
                maxconn: l.maxconn,
                queue_room: l.queue_room,
            };
            cap.set(l.id, c, 0).map_err(map_err(maps::CAPACITY))?;
        }
        let mut hb: Array<_, u64> = self.map_mut(maps::HEARTBEAT)?;
        hb.set(0, monotonic_ns(), 0)
            .map_err(map_err(maps::HEARTBEAT))
    }

    /// Engages or releases the SYN rate limits (`pressure.rs`), with the global budget an
    /// `auto` one stands at. One array write; nothing when unchanged.
    pub fn set_pressure(&mut self, p: Pressured) -> Result<(), DataplaneError> {
        if p == self.pressure {
            return Ok(());
        }
        self.pressure = p;
        let Some(cfg) = self.cfg.clone() else {
            return Ok(());
        };
        // Engaging: the sysctl first, then the flag; releasing: the flag off first.
        let cookies = self.hold_cookies(&cfg, p);
        let xdp_cfg = xdp_config(&cfg, p, cookies);
        let mut arr: Array<_, XdpConfig> = self.map_mut(maps::CONFIG)?;
        let written = arr.set(0, xdp_cfg, 0).map_err(map_err(maps::CONFIG));
        if !cookies {
            self.release_cookies();
        }
        written
    }

    /// Whether XDP may answer with SYN cookies under pressure state `p`; takes the sysctl when
    /// they are wanted and not held yet. A sysctl that cannot be written (a read-only
    /// `/proc/sys`) leaves cookies off: the over-budget SYNs are dropped, as without them.
    fn hold_cookies(&mut self, cfg: &config::Xdp, p: Pressured) -> bool {
        let want = cfg.syn_cookies == config::SynCookies::Auto && pressure_on(cfg, p);
        match &mut self.cookies {
            Cookies::Unmanaged => want,
            Cookies::Managed(held) => {
                if want && held.is_none() {
                    match crate::xdp::syncookies::Always::set() {
                        Ok(a) => *held = Some(a),
                        Err(e) => {
                            warn!(error = %e, "XDP SYN cookies stay off: net.ipv4.tcp_syncookies cannot be set to 2");
                        }
                    }
                }
                want && held.is_some()
            }
        }
    }

    /// Gives the sysctl back (restored when the hold drops).
    fn release_cookies(&mut self) {
        if let Cookies::Managed(held) = &mut self.cookies {
            held.take();
        }
    }

    /// SYNs admitted so far (syn_admitted and fail_open), summed over CPUs and interfaces.
    pub fn syn_admitted(&mut self) -> Result<u64, DataplaneError> {
        use floodgate_common::Reason;
        self.packets(&[Reason::PassSynAdmitted, Reason::PassFailOpen])
    }

    /// SYNs the global budget refused so far, dropped or answered with a cookie.
    pub fn syn_over_budget(&mut self) -> Result<u64, DataplaneError> {
        use floodgate_common::Reason;
        self.packets(&[Reason::DropSynRateGlobal, Reason::TxSynCookie])
    }

    /// Whether floodgate holds `tcp_syncookies` at 2 for XDP SYN cookies.
    pub fn kernel_cookies_held(&self) -> bool {
        matches!(self.cookies, Cookies::Managed(Some(_)))
    }

    fn packets(&mut self, reasons: &[floodgate_common::Reason]) -> Result<u64, DataplaneError> {
        use floodgate_common::{Counter, stats_index};
        let slots = u32::try_from(self.attachments.len())
            .unwrap_or(floodgate_common::MAX_IFACES)
            .min(floodgate_common::MAX_IFACES - 1);
        let stats: aya::maps::PerCpuArray<_, Counter> = self.map_mut(maps::STATS)?;
        let mut total = 0u64;
        for slot in 0..=slots {
            for reason in reasons {
                let per_cpu = stats
                    .get(&stats_index(slot, *reason), 0)
                    .map_err(map_err(maps::STATS))?;
                total = per_cpu
                    .iter()
                    .fold(total, |t, c| t.saturating_add(c.packets));
            }
        }
        Ok(total)
    }

    /// Uses `addrs` as the node's addresses from now on instead of the interfaces' (tests,
    /// whose packets are addressed to made-up destinations).
    pub fn set_local_addrs(&mut self, addrs: Vec<IpAddr>) -> Result<(), DataplaneError> {
        self.fixed_addrs = Some(addrs);
        self.sync_dests()
    }

    /// Rewrites `FG_DESTS` for the listeners and the node's current addresses: wildcard
    /// listeners follow addresses added to or removed from the node. Called at configure and
    /// every second; only the differences are written.
    pub fn sync_dests(&mut self) -> Result<(), DataplaneError> {
        let local = match &self.fixed_addrs {
            Some(a) => a.clone(),
            None => if_addrs::get_if_addrs()
                .map(|ifs| ifs.into_iter().map(|i| i.ip()).collect())
                .unwrap_or_else(|e| {
                    warn!(error = %e, "cannot read the node's addresses; wildcard listeners keep the last known ones");
                    self.dests
                        .keys()
                        .map(dest_ip)
                        .collect()
                }),
        };
        let want = dests(&self.binds, &local);
        if want == self.dests {
            return Ok(());
        }
        let stale: Vec<DestKey> = self
            .dests
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        let mut map: aya::maps::HashMap<_, DestKey, u32> = self.map_mut(maps::DESTS)?;
        // New entries first, then the stale ones: a destination that stays never disappears.
        for (k, v) in &want {
            map.insert(k, v, 0).map_err(map_err(maps::DESTS))?;
        }
        for k in &stale {
            let _ = map.remove(k);
        }
        self.dests = want;
        Ok(())
    }

    pub fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::Missing { what: "map", name })?;
        T::try_from(map).map_err(map_err(name))
    }

    fn write_attach_file(&self) {
        let path = attach_file(&self.pin_dir);
        let json = serde_json::to_vec_pretty(&self.attachments).unwrap_or_default();
        let written = std::fs::create_dir_all(STATE_DIR).and_then(|()| std::fs::write(&path, json));
        if let Err(e) = written {
            warn!(path = %path.display(), error = %e, "cannot record the XDP attachment for `floodgate stats`");
        }
    }

    /// Detaches from every interface and removes the pins this process made or reused.
    /// Detaches from every interface and removes the pins; or, with `keep_attached`, leaves
    /// the program running on its pinned links and maps for the next floodgate to take over
    /// (capacity admission fails open meanwhile, as the heartbeat stops).
    pub fn stop(mut self, keep_attached: bool) {
        let links = std::mem::take(&mut self.links);
        if keep_attached && links.iter().all(|l| matches!(l, HeldLink::Pinned(_))) {
            drop(links);
            info!(pin_dir = %self.pin_dir.display(), "XDP left attached on its pinned links for the next floodgate");
            return;
        }
        for link in links {
            if let HeldLink::Pinned(link) = link {
                // Unpinned and closed, the link goes away and detaches the program.
                if let Err(e) = link.unpin() {
                    warn!(error = %e, "cannot unpin an XDP link");
                }
            }
        }
        remove_pins(&self.pin_dir);
        info!("XDP detached, pins removed");
    }
}

/// What holds an attachment: a pinned bpf_link, or (netlink) the program itself.
enum HeldLink {
    Pinned(PinnedLink),
    Unpinnable,
}

/// Removes a floodgate pin directory: links (which detaches them), maps, the attach record.
/// The result of one pass over the flow table.
#[derive(Debug, Clone, Copy)]
pub struct Aged {
    pub removed: usize,
    /// Flows left in the table.
    pub live: u64,
}

pub fn remove_pins(pin_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(pin_dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("link_") || maps::ALL.contains(&name.as_ref()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::remove_file(attach_file(pin_dir));
    let _ = std::fs::remove_dir(pin_dir);
}

fn attach_one(prog: &mut Xdp, iface: &str, mode: XdpMode) -> Result<XdpLinkId, DataplaneError> {
    let name = if mode == XdpMode::Skb {
        "generic"
    } else {
        "native"
    };
    prog.attach(iface, mode)
        .map_err(|source| DataplaneError::Attach {
            iface: iface.into(),
            mode: name,
            source,
        })
}

/// A pinned map from an older floodgate with another shape (`maps::SPECS`: type, key and value
/// sizes, entries, flags) would be reused blindly by the loader; remove it so a fresh one is
/// created. `want_entries`: the configured size of a resizable map.
fn drop_incompatible_pin(name: &str, path: &Path, want_entries: Option<u32>) {
    let Ok(info) = MapInfo::from_pin(path) else {
        return;
    };
    let Some(spec) = maps::spec_of(name) else {
        return;
    };
    if !matches_spec(&info, spec, want_entries) {
        warn!(map = name, "pinned map has another layout; replacing it");
        let _ = std::fs::remove_file(path);
    }
}

/// Whether a map the kernel holds has the shape `spec` describes (`entries`: the configured
/// size of a resizable map).
pub fn matches_spec(info: &MapInfo, spec: &maps::Spec, entries: Option<u32>) -> bool {
    let kind = info.map_type().map(|t| t as u32).ok();
    kind == Some(spec.kind as u32)
        && info.key_size() == spec.key_size
        && info.value_size() == spec.value_size
        && info.max_entries() == entries.unwrap_or(spec.entries)
        && info.map_flags() == spec.flags
}

fn sync_trie<K: aya::Pod + PartialEq>(
    trie: &mut LpmTrie<&mut MapData, K, u32>,
    want: &[Key<K>],
) -> Result<(), aya::maps::MapError> {
    let have: Vec<Key<K>> = trie.keys().filter_map(Result::ok).collect();
    for k in &have {
        let kept = want
            .iter()
            .any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data());
        if !kept {
            trie.remove(k)?;
        }
    }
    for k in want {
        trie.insert(k, 1, 0)?;
    }
    Ok(())
}

/// Whether the SYN rate limits apply under `cfg` in pressure state `p`.
fn pressure_on(cfg: &config::Xdp, p: Pressured) -> bool {
    match cfg.pressure.mode {
        config::PressureMode::Always => true,
        config::PressureMode::Never => false,
        config::PressureMode::Auto => p.engaged,
    }
}

/// The MSS an XDP SYN-cookie SYN-ACK advertises: the smallest MTU of the XDP interfaces less
/// the IPv4 / IPv6 and TCP headers, as the kernel's own SYN-ACK would (1500 when unknown).
fn cookie_mss(interfaces: &[String]) -> (u16, u16) {
    let mtu = interfaces
        .iter()
        .filter_map(|i| {
            std::fs::read_to_string(format!("/sys/class/net/{i}/mtu"))
                .ok()
                .and_then(|m| m.trim().parse::<u32>().ok())
        })
        .min()
        .unwrap_or(1500)
        .clamp(1280, 65_535);
    let mss = |hdrs: u32| u16::try_from(mtu - hdrs).unwrap_or(u16::MAX);
    (mss(40), mss(60))
}

/// What the program reads of `cfg` (`FG_CONFIG`), under pressure state `p`; `cookies`: the
/// kernel side of XDP SYN cookies is in place.
fn xdp_config(cfg: &config::Xdp, p: Pressured, cookies: bool) -> XdpConfig {
    let ncpus = online_cpus();
    let (mss_v4, mss_v6) = cookie_mss(&cfg.interfaces);
    let s = &cfg.syn_rate;
    let mut flags = 0;
    for (on, flag) in [
        (!cfg.allow.is_empty(), FLAG_ALLOW_MODE),
        (cfg.flow_table, FLAG_FLOW_TABLE),
        (cfg.capacity_admission, FLAG_CAPACITY),
        (
            cfg.deny.iter().any(|n| matches!(n, IpNet::V4(_))),
            FLAG_DENY_V4,
        ),
        (
            cfg.deny.iter().any(|n| matches!(n, IpNet::V6(_))),
            FLAG_DENY_V6,
        ),
        (
            cfg.trusted.iter().any(|n| matches!(n, IpNet::V4(_))),
            floodgate_common::FLAG_TRUSTED_V4,
        ),
        (
            cfg.trusted.iter().any(|n| matches!(n, IpNet::V6(_))),
            floodgate_common::FLAG_TRUSTED_V6,
        ),
        (pressure_on(cfg, p), floodgate_common::FLAG_PRESSURE),
        (cookies, floodgate_common::FLAG_SYN_COOKIES),
    ] {
        if on {
            flags |= flag;
        }
    }
    let (global, global_burst) = match s.global {
        config::Budget::Fixed(n) => (n, s.global_burst),
        // One second's worth of burst.
        config::Budget::Auto => (p.auto_global, p.auto_global),
    };
    // The global budget is split evenly: each CPU keeps its own bucket, no locking.
    let (global_rate_per_cpu, global_burst_per_cpu) =
        (global.div_ceil(ncpus), global_burst.div_ceil(ncpus));
    XdpConfig {
        src_rate: s.per_source,
        src_burst: s.per_source_burst,
        global_rate_per_cpu,
        global_burst_per_cpu,
        src_prefix_v4: s.source_prefix_v4,
        src_prefix_v6: s.source_prefix_v6,
        fail_open_after_ns: u64::try_from(cfg.fail_open_after.0.as_nanos()).unwrap_or(u64::MAX),
        flags,
        verified_ttl_s: u32::try_from(cfg.verified_ttl.0.as_secs()).unwrap_or(u32::MAX),
        cookie_mss_v4: mss_v4,
        cookie_mss_v6: mss_v6,
        reserved: 0,
        src_fill_ns: floodgate_common::bucket_fill_ns(s.per_source, s.per_source_burst),
        global_fill_ns: floodgate_common::bucket_fill_ns(global_rate_per_cpu, global_burst_per_cpu),
    }
}

/// The `FG_DESTS` entries for `binds` on a node with addresses `local`: a bind's own address,
/// or for a wildcard bind every local address of its family (both for a dual-stack `[::]`).
/// Earlier listeners win a destination two could claim, as the kernel's most specific socket
/// would not tell them apart by address alone anyway.
fn dests(binds: &[SocketAddr], local: &[IpAddr]) -> std::collections::HashMap<DestKey, u32> {
    let mut out = std::collections::HashMap::new();
    let key = |ip: IpAddr, port: u16| match ip {
        IpAddr::V4(a) => DestKey {
            addr: a.to_ipv6_mapped().octets(),
            family: FAMILY_V4,
            port,
        },
        IpAddr::V6(a) => DestKey {
            addr: a.octets(),
            family: FAMILY_V6,
            port,
        },
    };
    // Specific binds first: they are the most specific match, as in the kernel's lookup.
    let mut order: Vec<(usize, &SocketAddr)> = binds.iter().enumerate().collect();
    order.sort_by_key(|(_, b)| b.ip().is_unspecified());
    for (id, bind) in order {
        let value = u32::try_from(id).unwrap_or(u32::MAX - 1) + 1;
        let port = bind.port();
        let addrs: Vec<IpAddr> = match bind.ip() {
            IpAddr::V4(a) if a.is_unspecified() => {
                local.iter().filter(|a| a.is_ipv4()).copied().collect()
            }
            IpAddr::V6(a) if a.is_unspecified() => local.to_vec(),
            ip => vec![ip],
        };
        for a in addrs {
            out.entry(key(a, port)).or_insert(value);
        }
    }
    out
}

/// The address of a `FG_DESTS` key.
fn dest_ip(k: &DestKey) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(k.addr);
    match (k.family, v6.to_ipv4_mapped()) {
        (FAMILY_V4, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

/// A wildcard bind protects the port for its family; a dual-stack `[::]` bind protects both.
fn listener_keys(bind: SocketAddr) -> Vec<ListenerKey> {
    let port = bind.port();
    match bind.ip() {
        IpAddr::V4(_) => vec![ListenerKey {
            family: FAMILY_V4,
            port,
        }],
        IpAddr::V6(a) if a.is_unspecified() => {
            vec![
                ListenerKey {
                    family: FAMILY_V6,
                    port,
                },
                ListenerKey {
                    family: FAMILY_V4,
                    port,
                },
            ]
        }
        IpAddr::V6(_) => vec![ListenerKey {
            family: FAMILY_V6,
            port,
        }],
    }
}

/// CPUs that run the XDP program: the global SYN budget is divided among them.
fn online_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).unwrap_or(1).max(1)
}

/// The clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn spawn_kernel_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd; flushing neither closes nor replaces it.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match fd {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "XDP program logs are unavailable");
            return;
        }
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// The pin directory of a running (or crashed) floodgate, for `floodgate stats`.
pub fn pinned(dir: &Path, name: &str) -> Result<MapData, DataplaneError> {
    MapData::from_pin(dir.join(name)).map_err(|e| DataplaneError::Pin {
        path: dir.join(name),
        reason: format!("{e} (is floodgate running with XDP enabled?)"),
    })
}

/// Collects the peers of accepted connections and writes them to `FG_VERIFIED` on each publish
/// tick, each at most once per quarter of the TTL, so a busy client costs one map update per
/// few minutes rather than one per connection.
pub struct VerifiedSources {
    rx: tokio::sync::mpsc::Receiver<IpAddr>,
    recent: std::collections::HashMap<IpAddr, std::time::Instant>,
    refresh: std::time::Duration,
    ttl: std::time::Duration,
    /// Sources seen for the first time (not in `recent`), since start.
    new_sources: u64,
}

/// Peers queued between two ticks at most; more are dropped and caught on a later connection.
const VERIFY_QUEUE: usize = 65_536;

impl VerifiedSources {
    /// `None` when the bypass is off (`verified-ttl: 0`).
    pub fn new(ttl: std::time::Duration) -> Option<(Self, tokio::sync::mpsc::Sender<IpAddr>)> {
        if ttl.is_zero() {
            return None;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(VERIFY_QUEUE);
        Some((
            Self {
                rx,
                recent: std::collections::HashMap::new(),
                refresh: ttl / 4,
                ttl,
                new_sources: 0,
            },
            tx,
        ))
    }

    /// Sources the proxy accepted a connection from for the first time, as far as its memory
    /// of recent sources goes, since start: the SYNs a global budget must leave room for,
    /// since verified sources skip it.
    pub fn new_sources(&self) -> u64 {
        self.new_sources
    }

    pub fn flush(&mut self, dp: &mut Dataplane) -> Result<(), DataplaneError> {
        let now = std::time::Instant::now();
        let mut fresh = Vec::new();
        while let Ok(ip) = self.rx.try_recv() {
            let seen = self.recent.get(&ip);
            if seen.is_none() {
                self.new_sources += 1;
            }
            let due = seen.is_none_or(|at| now.duration_since(*at) >= self.refresh);
            if due {
                self.recent.insert(ip, now);
                fresh.push(ip);
            }
        }
        // Forget what the kernel would have refreshed anyway, so the cache stays bounded.
        if self.recent.len() > VERIFY_QUEUE {
            let refresh = self.refresh;
            self.recent
                .retain(|_, at| now.duration_since(*at) < refresh);
        }
        dp.verify(fresh)?;
        dp.refresh_verified_filter(self.ttl)
    }
}
