//! A backend's servers and its connection slots, with HAProxy's semantics: a server never holds
//! more than its `maxconn` requests at once; when every usable server is full, requests wait in
//! the backend's FIFO queue for at most `timeout queue`, then get 503.
//!
//! A [`Slot`] is the right to send one request to one server. It is released on drop, and the
//! release hands the freed capacity to the oldest waiter, so the queue is strictly FIFO.
//!
//! A request that persists on one server (`sticky`) and finds it full waits in that server's
//! own queue, as in HAProxy: freed capacity goes to the oldest waiter that can use it, whether
//! it waits for the backend or for that server. Waiters of a server that went down or away go
//! back to the backend's queue, in their place.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::sync::oneshot;

use crate::{config::Balance, rng::xorshift};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("backend `{0}` has no server up")]
    NoServer(String),
    #[error("backend `{0}`: queue full")]
    QueueFull(String),
    #[error("backend `{backend}`: no server slot within the queue timeout ({waited:?})")]
    QueueTimeout { backend: String, waited: Duration },
}

/// Consecutive results per server, for rise/fall and passive ejection.
#[derive(Debug, Default)]
pub struct Streak {
    ok: AtomicU32,
    failed: AtomicU32,
}

impl Streak {
    /// Records a result; returns the new up/down state if it changed.
    pub(in crate::proxy) fn record(
        &self,
        ok: bool,
        rise: u32,
        fall: u32,
        up: bool,
    ) -> Option<bool> {
        if ok {
            self.failed.store(0, Ordering::Relaxed);
            let n = self.ok.fetch_add(1, Ordering::Relaxed) + 1;
            (!up && n >= rise).then_some(true)
        } else {
            self.ok.store(0, Ordering::Relaxed);
            let n = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
            (up && n >= fall).then_some(false)
        }
    }
}

impl Streak {
    /// Forgets the failures (an ejected server back in rotation starts afresh).
    pub(in crate::proxy) fn reset_failures(&self) {
        self.failed.store(0, Ordering::Relaxed);
    }
}

/// A pool's load, published to XDP (`FG_BACKENDS`) and used for listener admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLoad {
    pub active: u32,
    pub maxconn: u32,
    pub queued: u32,
    pub queue_max: u32,
    pub full: bool,
}

impl PoolLoad {
    /// Free places in the queue when every server is full; unlimited while a server has room.
    pub fn queue_room(&self) -> u32 {
        if self.full {
            self.queue_max.saturating_sub(self.queued)
        } else {
            u32::MAX
        }
    }
}

/// One server of a backend.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// `addr` as text, made once for metrics labels.
    pub label: String,
    /// `addr` as the authority of request targets, made once.
    pub authority: http::uri::Authority,
    pub weight: u32,
    /// 0: no limit.
    pub maxconn: u32,
    up: AtomicBool,
    /// Requests in flight (changed only under the pool's lock).
    active: AtomicU32,
    /// Consecutive check or connect results, for rise/fall.
    pub streak: Streak,
    /// The value of a `sticky` cookie naming this server: a hash of its address, the same in
    /// every floodgate replica and after restarts, that does not show the address.
    pub cookie: u64,
    /// Its `floodgate_server_responses_total` series (one backend per server).
    pub responses: crate::metrics::ServerResponses,
}

/// FNV-1a: stable across processes and versions, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Server {
    pub fn new(addr: SocketAddr, weight: u32, maxconn: u32) -> Self {
        let label = addr.to_string();
        Self {
            cookie: fnv1a(label.as_bytes()),
            addr,
            // A SocketAddr's text (`1.2.3.4:80`, `[::1]:80`) is always a valid authority.
            authority: http::uri::Authority::try_from(label.as_str())
                .unwrap_or_else(|_| http::uri::Authority::from_static("0.0.0.0:0")),
            label,
            weight: weight.max(1),
            maxconn,
            up: AtomicBool::new(true),
            active: AtomicU32::new(0),
            streak: Streak::default(),
            responses: crate::metrics::ServerResponses::default(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    fn has_room(&self) -> bool {
        self.is_up() && (self.maxconn == 0 || self.active() < self.maxconn)
    }
}

/// What asking for a slot gave.
enum Ask {
    Now(Slot),
    Queued(oneshot::Receiver<Slot>),
}

struct Waiter {
    tx: oneshot::Sender<Slot>,
    skip: Vec<SocketAddr>,
    /// Arrival order across the backend's queue and the servers' ones.
    seq: u64,
}

impl State {
    /// Waiters in every queue, closed ones included.
    fn waiting(&self) -> usize {
        self.queue.len() + self.pinned.values().map(VecDeque::len).sum::<usize>()
    }
}

struct State {
    servers: Vec<Arc<Server>>,
    /// Smooth weighted round robin state, one per server (nginx's algorithm).
    current: Vec<i64>,
    queue: VecDeque<Waiter>,
    /// Requests waiting for one server (`sticky`), per server.
    pinned: HashMap<SocketAddr, VecDeque<Waiter>>,
    next_seq: u64,
    rng: u64,
}

/// A backend's pool. Cheap to share: every field is behind the lock or atomic.
pub struct Pool {
    pub name: String,
    balance: Balance,
    queue_timeout: Duration,
    /// Waiters at most; past it a request fails at once rather than waiting.
    queue_max: usize,
    state: Mutex<State>,
    queued: AtomicU32,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("balance", &self.balance)
            .finish_non_exhaustive()
    }
}

/// The right to send one request to `server`; dropping it frees the place.
pub struct Slot {
    pub server: Arc<Server>,
    pool: Arc<Pool>,
    /// False once released by hand (under the pool's lock), so Drop does not release twice.
    armed: bool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("server", &self.server.addr)
            .finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.pool.lock();
        self.server.active.fetch_sub(1, Ordering::Relaxed);
        self.pool.hand_over(&mut st);
    }
}

impl Pool {
    pub fn new(
        name: &str,
        balance: Balance,
        queue_timeout: Duration,
        queue_max: usize,
        servers: Vec<Arc<Server>>,
    ) -> Arc<Self> {
        let current = vec![0; servers.len()];
        // Any odd seed works for xorshift; mixing in the address keeps pools apart.
        let seed = (std::ptr::from_ref(&servers).addr() as u64) | 1;
        Arc::new(Self {
            name: name.to_owned(),
            balance,
            queue_timeout,
            queue_max,
            state: Mutex::new(State {
                servers,
                current,
                queue: VecDeque::new(),
                pinned: HashMap::new(),
                next_seq: 0,
                rng: seed,
            }),
            queued: AtomicU32::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counts half-updated (each update is
        // one statement), so a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a reloaded backend can keep this pool (its immutable settings are the same).
    pub fn same_settings(
        &self,
        name: &str,
        balance: Balance,
        queue_timeout: Duration,
        queue_max: usize,
    ) -> bool {
        self.name == name
            && self.balance == balance
            && self.queue_timeout == queue_timeout
            && self.queue_max == queue_max
    }

    pub fn servers(&self) -> Vec<Arc<Server>> {
        self.lock().servers.clone()
    }

    /// In flight, the sum of the servers' limits (`u32::MAX` when one has none), queued, and
    /// the queue's size; and whether a new request would wait (every usable server full).
    pub fn load(&self) -> PoolLoad {
        let st = self.lock();
        let up: Vec<&Arc<Server>> = st.servers.iter().filter(|s| s.is_up()).collect();
        let active = up.iter().map(|s| s.active()).sum();
        let maxconn = up
            .iter()
            .try_fold(0u32, |acc, s| {
                (s.maxconn != 0).then(|| acc.saturating_add(s.maxconn))
            })
            .unwrap_or(u32::MAX);
        PoolLoad {
            active,
            maxconn,
            queued: self.queued(),
            queue_max: u32::try_from(self.queue_max).unwrap_or(u32::MAX),
            full: !up.iter().any(|s| s.has_room()),
        }
    }

    /// Requests waiting in the queue.
    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Replaces the server list (DNS re-resolution, config reload). Servers whose address stays
    /// keep their state and in-flight count; removed ones finish what they have in flight.
    pub fn set_servers(self: &Arc<Self>, wanted: Vec<Arc<Server>>) {
        let mut st = self.lock();
        let servers: Vec<Arc<Server>> = wanted
            .into_iter()
            .map(|w| {
                st.servers
                    .iter()
                    .find(|s| s.addr == w.addr && s.weight == w.weight && s.maxconn == w.maxconn)
                    .cloned()
                    .unwrap_or(w)
            })
            .collect();
        st.current = vec![0; servers.len()];
        st.servers = servers;
        // New servers may have room for queued requests.
        self.hand_over(&mut st);
    }

    /// A slot on a server with room now, or none: for work that must not wait nor take a
    /// place in the queue (a mirrored copy).
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let mut st = self.lock();
        if !st.queue.is_empty() || !st.pinned.is_empty() {
            // Requests are waiting: a copy does not go before them.
            return None;
        }
        let server = self.pick(&mut st, &[])?;
        Some(self.take(server))
    }

    /// A slot on a server with room, waiting in the FIFO queue when every server is full.
    /// `skip` lists servers this request already failed on (retries go elsewhere).
    pub async fn acquire(self: &Arc<Self>, skip: &[SocketAddr]) -> Result<Slot, PoolError> {
        self.acquire_sticky(skip, None).await
    }

    /// [`acquire`](Self::acquire), on the server whose `cookie` is `sticky` when it is up and
    /// not skipped: at once when it has room and nobody waits for it, else in its own queue.
    /// Otherwise (no such server, or down) the request is balanced as any other.
    pub async fn acquire_sticky(
        self: &Arc<Self>,
        skip: &[SocketAddr],
        sticky: Option<u64>,
    ) -> Result<Slot, PoolError> {
        self.acquire_timed(skip, sticky).await.0
    }

    /// [`acquire_sticky`](Self::acquire_sticky), with how long the request waited in a queue:
    /// zero when a server had room, which most requests find, and then without reading the
    /// clock (two reads per request otherwise).
    pub async fn acquire_timed(
        self: &Arc<Self>,
        skip: &[SocketAddr],
        sticky: Option<u64>,
    ) -> (Result<Slot, PoolError>, Duration) {
        let rx = match self.ask(skip, sticky) {
            Ok(Ask::Now(slot)) => return (Ok(slot), Duration::ZERO),
            Ok(Ask::Queued(rx)) => rx,
            Err(e) => return (Err(e), Duration::ZERO),
        };
        let asked = tokio::time::Instant::now();
        let slot = self.wait(rx).await;
        (slot, asked.elapsed())
    }

    /// A slot now, or a place in a queue.
    fn ask(self: &Arc<Self>, skip: &[SocketAddr], sticky: Option<u64>) -> Result<Ask, PoolError> {
        let mut st = self.lock();
        let pinned = sticky.and_then(|c| {
            st.servers
                .iter()
                .find(|s| s.cookie == c && s.is_up() && !skip.contains(&s.addr))
                .cloned()
        });
        let rx = match pinned {
            // Behind those already waiting for it, if any.
            Some(server) if server.has_room() && !st.pinned.contains_key(&server.addr) => {
                return Ok(Ask::Now(self.take(server)));
            }
            Some(server) => self.wait_in(&mut st, skip, Some(server.addr))?,
            None => {
                if let Some(server) = self.pick(&mut st, skip) {
                    return Ok(Ask::Now(self.take(server)));
                }
                if !st
                    .servers
                    .iter()
                    .any(|s| s.is_up() && !skip.contains(&s.addr))
                {
                    return Err(PoolError::NoServer(self.name.clone()));
                }
                self.wait_in(&mut st, skip, None)?
            }
        };
        Ok(Ask::Queued(rx))
    }

    /// A place in the backend's queue, or in `server`'s own.
    fn wait_in(
        &self,
        st: &mut State,
        skip: &[SocketAddr],
        server: Option<SocketAddr>,
    ) -> Result<oneshot::Receiver<Slot>, PoolError> {
        if self.queued() as usize >= self.queue_max {
            return Err(PoolError::QueueFull(self.name.clone()));
        }
        let (tx, rx) = oneshot::channel();
        let w = Waiter {
            tx,
            skip: skip.to_vec(),
            seq: st.next_seq,
        };
        st.next_seq += 1;
        match server {
            Some(addr) => st.pinned.entry(addr).or_default().push_back(w),
            None => st.queue.push_back(w),
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        Ok(rx)
    }

    /// Waits in a queue for at most `timeout queue`.
    async fn wait(self: &Arc<Self>, rx: oneshot::Receiver<Slot>) -> Result<Slot, PoolError> {
        match tokio::time::timeout(self.queue_timeout, rx).await {
            Ok(Ok(slot)) => Ok(slot),
            // Timed out (or the pool went away): leave the queue. A slot handed over in the
            // meantime is dropped with the receiver and passes on to the next waiter.
            _ => {
                let mut st = self.lock();
                let before = st.waiting();
                st.queue.retain(|w| !w.tx.is_closed());
                st.pinned.retain(|_, q| {
                    q.retain(|w| !w.tx.is_closed());
                    !q.is_empty()
                });
                let left = before - st.waiting();
                self.queued
                    .fetch_sub(u32::try_from(left).unwrap_or(0), Ordering::Relaxed);
                Err(PoolError::QueueTimeout {
                    backend: self.name.clone(),
                    waited: self.queue_timeout,
                })
            }
        }
    }

    fn take(self: &Arc<Self>, server: Arc<Server>) -> Slot {
        server.active.fetch_add(1, Ordering::Relaxed);
        Slot {
            server,
            pool: self.clone(),
            armed: true,
        }
    }

    /// Gives freed capacity to the oldest waiters that can use it: the backend queue's head,
    /// or the head of the queue of a server with room, whichever came first.
    fn hand_over(self: &Arc<Self>, st: &mut State) {
        self.unpin_unavailable(st);
        loop {
            while st.queue.front().is_some_and(|w| w.tx.is_closed()) {
                st.queue.pop_front();
                self.queued.fetch_sub(1, Ordering::Relaxed);
            }
            // The oldest waiter of a server that has room.
            let mut pinned: Option<(u64, Arc<Server>)> = None;
            if !st.pinned.is_empty() {
                for s in st.servers.iter().filter(|s| s.has_room()) {
                    let Some(q) = st.pinned.get_mut(&s.addr) else {
                        continue;
                    };
                    while q.front().is_some_and(|w| w.tx.is_closed()) {
                        q.pop_front();
                        self.queued.fetch_sub(1, Ordering::Relaxed);
                    }
                    if let Some(w) = q.front()
                        && pinned.as_ref().is_none_or(|(seq, _)| w.seq < *seq)
                    {
                        pinned = Some((w.seq, s.clone()));
                    }
                }
                st.pinned.retain(|_, q| !q.is_empty());
            }
            let head = st.queue.front().map(|w| (w.seq, w.skip.clone()));
            let (w, server) = match (pinned, head) {
                (Some((seq, server)), head) if head.as_ref().is_none_or(|(h, _)| seq < *h) => {
                    (Self::pop_pinned(st, server.addr), server)
                }
                (pinned, Some((_, skip))) => match (self.pick(st, &skip), pinned) {
                    (Some(server), _) => (st.queue.pop_front(), server),
                    // The queue's head can use no server with room; a pinned waiter can.
                    (None, Some((_, server))) => (Self::pop_pinned(st, server.addr), server),
                    (None, None) => return,
                },
                _ => return,
            };
            let Some(w) = w else { return };
            self.queued.fetch_sub(1, Ordering::Relaxed);
            let slot = self.take(server);
            if let Err(mut slot) = w.tx.send(slot) {
                // The waiter left between the check and the send: release here, as Drop would
                // take the lock we hold.
                slot.server.active.fetch_sub(1, Ordering::Relaxed);
                slot.armed = false;
            }
        }
    }

    fn pop_pinned(st: &mut State, addr: SocketAddr) -> Option<Waiter> {
        let q = st.pinned.get_mut(&addr)?;
        let w = q.pop_front();
        if q.is_empty() {
            st.pinned.remove(&addr);
        }
        w
    }

    /// Waiters of a server that is down or no longer in the backend go back to the backend's
    /// queue, in arrival order (HAProxy redispatches them too).
    fn unpin_unavailable(&self, st: &mut State) {
        if st.pinned.is_empty() {
            return;
        }
        let gone: Vec<SocketAddr> = st
            .pinned
            .keys()
            .filter(|a| !st.servers.iter().any(|s| s.addr == **a && s.is_up()))
            .copied()
            .collect();
        for addr in gone {
            for w in st.pinned.remove(&addr).unwrap_or_default() {
                let at = st.queue.partition_point(|q| q.seq < w.seq);
                st.queue.insert(at, w);
            }
        }
    }

    /// Chooses a server with room, or `None` when all usable ones are full.
    fn pick(&self, st: &mut State, skip: &[SocketAddr]) -> Option<Arc<Server>> {
        let usable = |s: &Arc<Server>| s.has_room() && !skip.contains(&s.addr);
        match self.balance {
            Balance::Roundrobin => {
                // Smooth weighted round robin over the usable servers.
                let total: i64 = st
                    .servers
                    .iter()
                    .filter(|s| usable(s))
                    .map(|s| i64::from(s.weight))
                    .sum();
                let mut best: Option<usize> = None;
                for i in 0..st.servers.len() {
                    if !usable(&st.servers[i]) {
                        continue;
                    }
                    st.current[i] += i64::from(st.servers[i].weight);
                    if best.is_none_or(|b| st.current[i] > st.current[b]) {
                        best = Some(i);
                    }
                }
                let b = best?;
                st.current[b] -= total;
                Some(st.servers[b].clone())
            }
            Balance::Leastconn => st
                .servers
                .iter()
                .filter(|s| usable(s))
                // Fewest requests per unit of weight; compare a/wa < b/wb as a*wb < b*wa.
                .min_by_key(|s| (u64::from(s.active()) << 16) / u64::from(s.weight))
                .cloned(),
            Balance::RandomTwoChoices => {
                let candidates: Vec<&Arc<Server>> =
                    st.servers.iter().filter(|s| usable(s)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0].clone()),
                    n => {
                        let a = candidates[(xorshift(&mut st.rng) % n as u64) as usize];
                        let b = candidates[(xorshift(&mut st.rng) % n as u64) as usize];
                        let load =
                            |s: &Arc<Server>| (u64::from(s.active()) << 16) / u64::from(s.weight);
                        Some(if load(b) < load(a) {
                            b.clone()
                        } else {
                            a.clone()
                        })
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall() {
        let s = Streak::default();
        assert_eq!(s.record(false, 2, 3, true), None);
        assert_eq!(s.record(false, 2, 3, true), None);
        assert_eq!(
            s.record(false, 2, 3, true),
            Some(false),
            "third failure: down"
        );
        assert_eq!(s.record(true, 2, 3, false), None);
        assert_eq!(
            s.record(true, 2, 3, false),
            Some(true),
            "second success: up"
        );
        assert_eq!(
            s.record(false, 2, 3, true),
            None,
            "one failure resets nothing yet"
        );
        assert_eq!(s.record(true, 2, 3, true), None);
    }

    fn server(port: u16, weight: u32, maxconn: u32) -> Arc<Server> {
        Arc::new(Server::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
            maxconn,
        ))
    }

    fn pool(balance: Balance, servers: Vec<Arc<Server>>) -> Arc<Pool> {
        Pool::new("b", balance, Duration::from_secs(5), 100, servers)
    }

    #[tokio::test]
    async fn weighted_round_robin_is_smooth() {
        let p = pool(
            Balance::Roundrobin,
            vec![server(1, 5, 0), server(2, 1, 0), server(3, 1, 0)],
        );
        let mut order = Vec::new();
        for _ in 0..7 {
            order.push(p.acquire(&[]).await.unwrap().server.addr.port());
        }
        // nginx's smooth WRR for weights 5,1,1.
        assert_eq!(order, [1, 1, 2, 1, 3, 1, 1]);
    }

    #[tokio::test]
    async fn leastconn_prefers_the_idle_server() {
        let p = pool(Balance::Leastconn, vec![server(1, 1, 0), server(2, 1, 0)]);
        let a = p.acquire(&[]).await.unwrap();
        let b = p.acquire(&[]).await.unwrap();
        assert_ne!(a.server.addr, b.server.addr);
        drop(a);
        let c = p.acquire(&[]).await.unwrap();
        assert_eq!(c.server.addr.port(), 1, "server 1 is idle again");
    }

    #[tokio::test]
    async fn random_two_choices_spreads_and_respects_maxconn() {
        let p = pool(
            Balance::RandomTwoChoices,
            vec![server(1, 1, 3), server(2, 1, 3), server(3, 1, 3)],
        );
        let mut held = Vec::new();
        for _ in 0..9 {
            held.push(p.acquire(&[]).await.unwrap());
        }
        for s in p.servers() {
            assert_eq!(s.active(), 3, "{}", s.addr);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn maxconn_is_never_exceeded_and_the_queue_is_fifo() {
        let p = pool(Balance::Roundrobin, vec![server(1, 1, 2)]);
        let a = p.acquire(&[]).await.unwrap();
        let b = p.acquire(&[]).await.unwrap();
        assert_eq!(p.servers()[0].active(), 2);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (p, order) = (p.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let slot = p.acquire(&[]).await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(slot);
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(p.queued(), 3);
        assert_eq!(p.servers()[0].active(), 2, "full: nobody got past maxconn");
        drop(a);
        drop(b);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2], "served in arrival order");
        assert_eq!((p.queued(), p.servers()[0].active()), (0, 0));
    }

    /// The time waited is zero when a server has room, and the time spent queued otherwise.
    #[tokio::test(start_paused = true)]
    async fn the_wait_is_zero_with_room_and_the_time_queued_without() {
        let p = pool(Balance::Roundrobin, vec![server(1, 1, 1)]);
        let (held, waited) = p.acquire_timed(&[], None).await;
        assert_eq!(waited, Duration::ZERO);
        let held = held.unwrap();
        let q = p.clone();
        let queued = tokio::spawn(async move { q.acquire_timed(&[], None).await });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(p.queued(), 1);
        drop(held);
        let (slot, waited) = queued.await.unwrap();
        assert!(slot.is_ok());
        assert_eq!(waited, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_backend_answers_after_the_queue_timeout() {
        let p = pool(Balance::Roundrobin, vec![server(1, 1, 1)]);
        let _held = p.acquire(&[]).await.unwrap();
        let t = tokio::time::Instant::now();
        let err = p.acquire(&[]).await.unwrap_err();
        assert_eq!(
            err,
            PoolError::QueueTimeout {
                backend: "b".into(),
                waited: Duration::from_secs(5)
            }
        );
        assert_eq!(
            t.elapsed(),
            Duration::from_secs(5),
            "exactly timeout queue, on the paused clock"
        );
        assert_eq!(p.queued(), 0, "the timed-out request left the queue");
    }

    #[tokio::test]
    async fn down_servers_are_skipped_and_all_down_fails_at_once() {
        let p = pool(Balance::Roundrobin, vec![server(1, 1, 0), server(2, 1, 0)]);
        p.servers()[0].set_up(false);
        for _ in 0..3 {
            assert_eq!(p.acquire(&[]).await.unwrap().server.addr.port(), 2);
        }
        p.servers()[1].set_up(false);
        assert_eq!(
            p.acquire(&[]).await.unwrap_err(),
            PoolError::NoServer("b".into())
        );
    }

    #[tokio::test]
    async fn retries_skip_tried_servers_and_a_full_queue_refuses() {
        let p = Pool::new(
            "b",
            Balance::Roundrobin,
            Duration::from_secs(5),
            0,
            vec![server(1, 1, 1), server(2, 1, 0)],
        );
        let first = SocketAddr::from(([127, 0, 0, 1], 2));
        assert_eq!(p.acquire(&[first]).await.unwrap().server.addr.port(), 1);
        let _held = p.acquire(&[first]).await.unwrap();
        assert_eq!(
            p.acquire(&[first]).await.unwrap_err(),
            PoolError::QueueFull("b".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sticky_requests_wait_for_their_server_in_its_own_queue() {
        let p = pool(Balance::Roundrobin, vec![server(1, 1, 1), server(2, 1, 0)]);
        let s1 = p.servers()[0].clone();
        // Round robin would alternate; the cookie keeps every request on server 1.
        let held = p.acquire_sticky(&[], Some(s1.cookie)).await.unwrap();
        assert_eq!(held.server.addr.port(), 1);
        // Server 1 is full (maxconn 1): the sticky request waits for it although server 2
        // has room, and an unpinned one goes to server 2 meanwhile.
        let waiting = tokio::spawn({
            let p = p.clone();
            async move {
                p.acquire_sticky(&[], Some(s1.cookie))
                    .await
                    .unwrap()
                    .server
                    .addr
            }
        });
        tokio::task::yield_now().await;
        assert_eq!(p.queued(), 1);
        assert_eq!(p.acquire(&[]).await.unwrap().server.addr.port(), 2);
        assert!(!waiting.is_finished());
        drop(held);
        assert_eq!(
            waiting.await.unwrap().port(),
            1,
            "handed server 1 when it freed"
        );
        assert_eq!(p.queued(), 0);
        // An unknown cookie, or a down server's, is balanced as usual.
        assert!(p.acquire_sticky(&[], Some(42)).await.is_ok());
        p.servers()[0].set_up(false);
        let c = p.servers()[0].cookie;
        assert_eq!(
            p.acquire_sticky(&[], Some(c))
                .await
                .unwrap()
                .server
                .addr
                .port(),
            2
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_of_a_server_that_went_down_are_redispatched_in_order() {
        let p = pool(Balance::Roundrobin, vec![server(1, 1, 1), server(2, 1, 1)]);
        let (s1, s2) = (p.servers()[0].clone(), p.servers()[1].clone());
        let a = p.acquire_sticky(&[], Some(s1.cookie)).await.unwrap();
        let b = p.acquire_sticky(&[], Some(s2.cookie)).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        // 0 waits for server 1, 1 for any server, 2 for server 1.
        for (i, sticky) in [(0, Some(s1.cookie)), (1, None), (2, Some(s1.cookie))] {
            let (p, order) = (p.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let slot = p.acquire_sticky(&[], sticky).await.unwrap();
                order.lock().unwrap().push((i, slot.server.addr.port()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(p.queued(), 3);
        // Server 1 goes down; server 2's slot frees: its waiters are now the backend's, and
        // the oldest goes first.
        s1.set_up(false);
        drop(b);
        drop(a);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [(0, 2), (1, 2), (2, 2)]);
        assert_eq!(p.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_waiter_gets_a_freed_slot_across_queues() {
        let p = pool(Balance::Roundrobin, vec![server(1, 1, 1)]);
        let s1 = p.servers()[0].clone();
        let held = p.acquire(&[]).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (i, sticky) in [
            (0, None),
            (1, Some(s1.cookie)),
            (2, None),
            (3, Some(s1.cookie)),
        ] {
            let (p, order) = (p.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let _slot = p.acquire_sticky(&[], sticky).await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }));
            tokio::task::yield_now().await;
        }
        drop(held);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3]);
    }

    #[test]
    fn cookies_are_stable_and_distinct() {
        let a = Server::new(SocketAddr::from(([10, 0, 0, 1], 80)), 1, 0);
        let b = Server::new(SocketAddr::from(([10, 0, 0, 2], 80)), 1, 0);
        assert_ne!(a.cookie, b.cookie);
        // FNV-1a of "10.0.0.1:80": the same in every process and replica.
        assert_eq!(a.cookie, fnv1a(b"10.0.0.1:80"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[tokio::test]
    async fn set_servers_keeps_state_of_servers_that_stay() {
        let p = pool(Balance::Roundrobin, vec![server(1, 1, 0), server(2, 1, 0)]);
        let held = p.acquire(&[]).await.unwrap();
        let port = held.server.addr.port();
        p.set_servers(vec![server(port, 1, 0), server(3, 1, 0)]);
        let kept = p
            .servers()
            .into_iter()
            .find(|s| s.addr.port() == port)
            .unwrap();
        assert_eq!(kept.active(), 1, "in-flight count survives");
        drop(held);
        assert_eq!(kept.active(), 0);
    }
}
