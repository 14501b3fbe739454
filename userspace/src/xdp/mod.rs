//! The kernel side of admission, seen from userspace: loading, attaching and configuring the
//! XDP program (`dataplane`), its counters (`stats`), the SYN-pressure policy that engages its
//! rate limits (`pressure`) and the kernel's SYN cookies beside its own (`syncookies`), the
//! NOTRACK rules that keep listener flows out of conntrack (`conntrack`), batched walks of
//! its maps (`batch`), and the verified sources' Bloom filter (`verified`).

pub mod batch;
pub mod conntrack;
pub mod dataplane;
pub mod pressure;
pub mod stats;
pub mod syncookies;
pub mod verified;
