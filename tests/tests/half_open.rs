//! A connection that goes silent (a lost node, a half-open TCP connection behind a NAT or
//! a dead load balancer) must fail its calls within the keepalive, not hang until the
//! request's deadline.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::shared_roles;
use ig_orchestrator::channel::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Copies bytes from `from` to `to` until `silent` is set; then holds both ends open and
/// forwards nothing more, as a dead peer behind a live socket would.
async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, silent: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silent.load(Ordering::SeqCst) {
            // Both halves stay open (they live in this parked task) and nothing moves.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A TCP proxy to `target` that can be told to go silent.
async fn silenceable_proxy(target: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = Arc::new(AtomicBool::new(false));
    let flag = silent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(target).await else { continue };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pipe(cr, sw, flag.clone()));
            tokio::spawn(pipe(sr, cw, flag.clone()));
        }
    });
    (addr, silent)
}

#[tokio::test]
async fn a_silent_connection_fails_its_call_within_the_keepalive() {
    let (addr, silent) = silenceable_proxy(shared_roles().policy).await;
    let client = ig_orchestrator::PolicyClient::connect_lazy(&format!("http://{addr}"), None).unwrap();
    client.info().await.expect("through the proxy while it forwards");
    silent.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let bound = KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT + Duration::from_secs(20);
    let outcome = tokio::time::timeout(bound, client.info())
        .await
        .unwrap_or_else(|_| panic!("a call on a silent connection hung for {bound:?}: no keepalive"));
    let err = outcome.expect_err("nothing can answer through a silent connection");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    eprintln!("failed after {:?}: {err}", started.elapsed());
}

#[tokio::test]
async fn waiting_for_a_server_that_never_answers_ends_at_its_timeout() {
    let (addr, silent) = silenceable_proxy(shared_roles().policy).await;
    silent.store(true, Ordering::SeqCst);
    let client = ig_orchestrator::PolicyClient::connect_lazy(&format!("http://{addr}"), None).unwrap();
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), client.wait_ready(Duration::from_secs(3)))
        .await
        .expect("wait_ready outlived its own timeout: a health check hung");
    let err = outcome.expect_err("a silent server is never ready");
    assert!(err.to_string().contains("was not ready"), "{err}");
    // It ends at its 3 s, not at the connection's own timeouts (5 s to connect, 20 s of keepalive).
    assert!(started.elapsed() < Duration::from_millis(4500), "{:?}", started.elapsed());
}
