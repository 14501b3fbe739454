//! Workers balanced by load: the `SO_REUSEPORT` program (`ebpf/src/reuseport.rs`) gives each
//! new connection to the worker socket with the fewest active connections, as the workers count
//! them in the program's shared load map.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use floodgate::proxy::listener::balance;
use floodgate_tests::{
    free_port, metric, require_root, spawn_floodgate, spawn_origin, temp_file, wait_for_port,
};

fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// The runtime tokio's sockets register with while they are made.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A listening socket of a `SO_REUSEPORT` group on `port`, accepting without blocking.
fn member(port: u16) -> TcpListener {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.set_reuseport(true).unwrap();
    s.bind(addr(port)).unwrap();
    let l = s.listen(1024).unwrap().into_std().unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

/// Connections waiting in each socket's accept queue, accepted and dropped.
fn accepted(socks: &[&TcpListener]) -> Vec<usize> {
    socks
        .iter()
        .map(|s| std::iter::from_fn(|| s.accept().ok()).count())
        .collect()
}

/// `n` connections, each complete (in an accept queue) before the next starts.
fn connect(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| TcpStream::connect(addr(port)).unwrap())
        .collect()
}

#[test]
fn each_new_connection_goes_to_the_least_loaded_socket() {
    if !require_root("each_new_connection_goes_to_the_least_loaded_socket") {
        return;
    }
    let rt = runtime();
    let _in_rt = rt.enter();
    let port = free_port();
    let (a, b, c) = (member(port), member(port), member(port));
    let (_balancer, loads) = balance::attach(&[vec![&a, &b, &c]], 3).unwrap();
    let socks = [&a, &b, &c];
    let seat = |worker| balance::Seat {
        loads: loads.clone(),
        worker,
        listener: 0,
    };
    // What a worker's accept loop does when it finds its queue empty.
    let drained = || (0..3).for_each(|w| seat(w).drained());

    // Worker 1 is the least loaded: every connection is its.
    for (w, n) in [(0, 50), (1, 2), (2, 90)] {
        loads.set(w, n);
    }
    let _c = connect(port, 24);
    assert_eq!(accepted(&socks), [0, 24, 0]);
    // The connections are counted where they wait, until the worker finds its queue empty.
    assert_eq!(loads.queued(0)[..3], [0, 24, 0]);
    drained();
    assert_eq!(loads.queued(0)[..3], [0, 0, 0]);
    // The program reads the loads as they change, connection by connection.
    loads.set(1, 100);
    let _c = connect(port, 24);
    assert_eq!(accepted(&socks), [24, 0, 0]);
    drained();

    // Equal loads: the connection's hash picks, and every worker gets some of 96.
    for w in 0..3 {
        loads.set(w, 7);
    }
    let _c = connect(port, 96);
    let spread = accepted(&socks);
    assert_eq!(spread.iter().sum::<usize>(), 96);
    assert!(spread.iter().all(|&n| n > 0), "{spread:?}");
    drained();

    // Loads the guards count: a connection held raises its worker's load for the next. The
    // guards are what an accept makes, which also takes the connection off the waiting count.
    for w in 0..3 {
        loads.set(w, 0);
    }
    let _held: Vec<_> = [0, 0, 1].iter().map(|&w| seat(w).accepted()).collect();
    assert_eq!(loads.queued(0)[..3], [0, 0, 0], "never below zero");
    assert_eq!(loads.snapshot()[..3], [2, 1, 0]);
    // Connections left waiting count as the accepted ones do: worker 2 gets one (1 waiting
    // against worker 1's 1 active), then the three share them, each load within one of the
    // others' (what the active counts alone would give: all 12 to worker 2).
    let _c = connect(port, 12);
    let got = accepted(&socks);
    assert_eq!(got.iter().sum::<usize>(), 12);
    let totals: Vec<usize> = [2, 1, 0].iter().zip(&got).map(|(a, g)| a + g).collect();
    let (lo, hi) = (totals.iter().min().unwrap(), totals.iter().max().unwrap());
    assert!(
        hi - lo <= 1,
        "active + waiting per worker: {totals:?} (accepted {got:?})"
    );
}

#[test]
fn a_second_listener_is_balanced_apart_from_the_first() {
    if !require_root("a_second_listener_is_balanced_apart_from_the_first") {
        return;
    }
    let rt = runtime();
    let _in_rt = rt.enter();
    let (p1, p2) = (free_port(), free_port());
    let (a1, b1, a2, b2) = (member(p1), member(p1), member(p2), member(p2));
    let (_balancer, loads) = balance::attach(&[vec![&a1, &b1], vec![&a2, &b2]], 2).unwrap();
    loads.set(0, 30);
    let _c = connect(p1, 10);
    let _d = connect(p2, 10);
    // Both listeners' connections go to worker 1's socket of that listener, none crosses, and
    // each listener's waiting connections are counted apart.
    assert_eq!(accepted(&[&a1, &b1]), [0, 10]);
    assert_eq!(accepted(&[&a2, &b2]), [0, 10]);
    assert_eq!(loads.queued(0)[..2], [0, 10]);
    assert_eq!(loads.queued(1)[..2], [0, 10]);
}

/// One request on a new connection, answered, the connection kept open.
fn open_one(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(addr(port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the response");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s
}

fn worker_connections(admin: SocketAddr) -> (f64, f64) {
    let (_, body) = floodgate_tests::http_get(admin, "t", "/metrics").unwrap();
    (
        metric(&body, "floodgate_worker_connections{worker=\"0\"}").unwrap(),
        metric(&body, "floodgate_worker_connections{worker=\"1\"}").unwrap(),
    )
}

/// floodgate with two workers and the default `global.worker-balance: load`: connections that
/// stay open are shared one for one, which the kernel's hash alone does only by chance (the
/// gap of a 40-step random walk stays within 1 with probability under 1 in 10^5).
#[test]
fn floodgate_keeps_its_workers_connections_even() {
    if !require_root("floodgate_keeps_its_workers_connections_even") {
        return;
    }
    let (origin, web, admin) = (free_port(), free_port(), free_port());
    let _origin = spawn_origin(origin, "origin");
    let config = temp_file(
        "balance.yaml",
        &format!(
            "
xdp: {{ enabled: false }}
global: {{ nbthread: 2, timeouts: {{ http-keep-alive: 60s }} }}
admin: {{ bind: '127.0.0.1:{admin}' }}
listeners: [{{ name: web, bind: '127.0.0.1:{web}', default-backend: app }}]
backends: [{{ name: app, servers: ['127.0.0.1:{origin}'] }}]
"
        ),
    );
    let _fg = spawn_floodgate(&config);
    assert!(wait_for_port(addr(web), Duration::from_secs(10)));
    assert!(wait_for_port(addr(admin), Duration::from_secs(5)));
    assert!(wait_for_port(addr(origin), Duration::from_secs(5)));
    // Each connection's worker, told by which count rose when it opened.
    let mut on = [Vec::new(), Vec::new()];
    for i in 1..=40 {
        let before = worker_connections(addr(admin));
        let s = open_one(web);
        let (w0, w1) = worker_connections(addr(admin));
        assert_eq!(
            w0 + w1,
            f64::from(i),
            "every open connection is counted once"
        );
        assert!(
            (w0 - w1).abs() <= 1.0,
            "after {i} connections: {w0} and {w1}"
        );
        // A worker below the other gets the connection.
        if before.0 < before.1 {
            assert_eq!((w0, w1), (before.0 + 1.0, before.1));
        } else if before.1 < before.0 {
            assert_eq!((w0, w1), (before.0, before.1 + 1.0));
        }
        on[usize::from(w1 > before.1)].push(s);
    }
    assert_eq!((on[0].len(), on[1].len()), (20, 20));
    // Half of worker 0's connections close: the next ten new ones all go to worker 0.
    on[0].truncate(10);
    assert!(floodgate_tests::wait_until(Duration::from_secs(5), || {
        worker_connections(addr(admin)) == (10.0, 20.0)
    }));
    for i in 1..=10 {
        on[0].push(open_one(web));
        assert_eq!(worker_connections(addr(admin)), (10.0 + f64::from(i), 20.0));
    }
}
