//! Leader election over a coordination.k8s.io/v1 Lease, as client-go's leaderelection does:
//! one pod holds the Lease and renews it; another takes it over once it has not been renewed
//! for its duration. Only the holder writes status and events; every pod serves.
//!
//! Writes are conditional on the Lease's resourceVersion, so two pods that both see it expired
//! cannot both take it: the second replace gets 409 Conflict.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

/// How long a Lease holds without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews it and the others look at it.
pub const RETRY: Duration = Duration::from_secs(2);

/// Starts the election; the receiver says whether this pod holds the Lease now.
pub fn spawn(
    client: Client,
    namespace: String,
    lease: String,
    me: String,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &namespace);
        let mut held_until: Option<tokio::time::Instant> = None;
        loop {
            let now = tokio::time::Instant::now();
            match try_hold(&api, &lease, &me).await {
                Ok(true) => held_until = Some(now + LEASE_DURATION),
                Ok(false) => held_until = None,
                // Unanswered: the Lease is still ours until it would expire for the others.
                Err(e) => {
                    warn!(error = %e, lease = %lease, "cannot read or renew the leader Lease")
                }
            }
            let leading = held_until.is_some_and(|t| tokio::time::Instant::now() < t);
            if *tx.borrow() != leading {
                info!(lease = %lease, identity = %me, leading, "leader election");
                tx.send_replace(leading);
            }
            tokio::time::sleep(RETRY).await;
        }
    });
    rx
}

/// One round: create, renew or take over the Lease. Ok(true) when this pod holds it.
async fn try_hold(api: &Api<Lease>, name: &str, me: &str) -> Result<bool, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let duration = i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(15);
    let Some(mut lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(me.to_owned()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return conflict_is_false(api.create(&PostParams::default(), &lease).await);
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let mine = spec.holder_identity.as_deref() == Some(me);
    if !mine {
        let held_for = i64::from(spec.lease_duration_seconds.unwrap_or(duration));
        let expired = spec.renew_time.as_ref().is_none_or(|t| {
            Timestamp::now().as_second() > t.0.as_second().saturating_add(held_for)
        });
        if !expired {
            return Ok(false);
        }
        spec.holder_identity = Some(me.to_owned());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(duration);
    conflict_is_false(api.replace(name, &PostParams::default(), &lease).await)
}

/// Gives the Lease up if this pod holds it, so another takes over at once instead of after
/// the Lease's duration (a rolling update, a drain): client-go's `ReleaseOnCancel`.
pub async fn release(client: Client, namespace: &str, name: &str, me: &str) {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let Ok(Some(mut lease)) = api.get_opt(name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(me) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => info!(lease = %name, "leader Lease released"),
        Err(e) => warn!(error = %e, lease = %name, "cannot release the leader Lease"),
    }
}

/// A 409 means another pod wrote first: not ours.
fn conflict_is_false<T>(r: Result<T, kube::Error>) -> Result<bool, kube::Error> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// This pod's name in the election: `POD_NAME` (the downward API), else the host name and pid.
pub fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "floodgate".into());
        format!("{host}-{}", std::process::id())
    })
}
