//! The capabilities floodgate keeps once it has started.
//!
//! Loading and attaching the XDP program needs `CAP_BPF`, `CAP_PERFMON` (the verifier's
//! pointer arithmetic checks) and `CAP_NET_ADMIN`; binding ports under 1024 needs
//! `CAP_NET_BIND_SERVICE`. Once the program is attached and every socket bound, the maps are
//! updated through file descriptors floodgate already holds, which needs no capability on
//! kernels 6.5 and later. What is left is `CAP_NET_ADMIN`, to remove floodgate's nftables
//! table and a netlink-attached program at exit. Everything else is dropped from every set,
//! the bounding set included, before any other thread starts, so no thread and no child
//! (`nft`) can use it again.

use caps::{CapSet, Capability, CapsHashSet};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot read the process's capabilities: {0}")]
    Read(#[source] caps::errors::CapsError),
    #[error("cannot drop {cap} from the {set} set: {source}")]
    Drop {
        cap: Capability,
        set: &'static str,
        source: caps::errors::CapsError,
    },
}

/// What floodgate still needs after start: `CAP_NET_ADMIN` when it runs XDP (its exit
/// clean-up), nothing otherwise.
pub fn needed_after_start(xdp: bool) -> CapsHashSet {
    let mut keep = CapsHashSet::new();
    if xdp {
        keep.insert(Capability::CAP_NET_ADMIN);
    }
    keep
}

/// Drops every capability but `keep` from this thread's sets (call it before other threads
/// start: they inherit the result). Returns the capabilities kept that the process had.
pub fn drop_all_but(keep: &CapsHashSet) -> Result<CapsHashSet, PrivilegeError> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(PrivilegeError::Read)?;
    let bounding = caps::read(None, CapSet::Bounding).map_err(PrivilegeError::Read)?;
    let effective = caps::read(None, CapSet::Effective).map_err(PrivilegeError::Read)?;
    // The bounding set first, while CAP_SETPCAP is still effective (when there is one).
    if effective.contains(&Capability::CAP_SETPCAP) {
        for cap in bounding.difference(keep) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(|source| PrivilegeError::Drop {
                cap: *cap,
                set: "bounding",
                source,
            })?;
        }
    }
    let kept: CapsHashSet = permitted.intersection(keep).copied().collect();
    caps::clear(None, CapSet::Ambient).map_err(|source| PrivilegeError::Drop {
        cap: Capability::CAP_SETPCAP,
        set: "ambient",
        source,
    })?;
    let none = CapsHashSet::new();
    for (set, name, want) in [
        (CapSet::Inheritable, "inheritable", &none),
        (CapSet::Effective, "effective", &kept),
        (CapSet::Permitted, "permitted", &kept),
    ] {
        caps::set(None, set, want).map_err(|source| PrivilegeError::Drop {
            cap: Capability::CAP_SETPCAP,
            set: name,
            source,
        })?;
    }
    Ok(kept)
}
