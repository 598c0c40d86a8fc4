//! A round-trip-time proxy (`--upstream-rtt-ms N`, issue 11 item 4): a TCP forwarder put in
//! front of the fake Gmail that delays everything it forwards by N/2 ms in each direction,
//! so every write (SMTP replies, commands, each TLS handshake flight, message data) arrives
//! N/2 ms after it was sent, and a reply comes N ms after its command, as against Gmail
//! over the Internet.
//!
//! Both the relay (its upstream connections) and the direct client connect through it, so
//! the comparison stays fair; the relay's own clients stay on loopback (a sidecar). Data is
//! delayed, not throttled: each chunk gets its own due time, so a large message still
//! streams at loopback speed after the first N/2 ms. The TCP handshake is modelled by
//! waiting one RTT before the proxy connects upstream, so the server's greeting reaches the
//! client 1.5 RTT after `connect`, as on a real network.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Starts a proxy on the runtime `rt` forwarding to `upstream` with round-trip time `rtt`;
/// returns its address. It stops (listener and connections) when `stop` is cancelled.
pub(crate) async fn start(
    rt: &tokio::runtime::Handle,
    upstream: SocketAddr,
    rtt: Duration,
    stop: CancellationToken,
) -> SocketAddr {
    let listener = rt
        .spawn(async { TcpListener::bind("127.0.0.1:0").await })
        .await
        .expect("delay proxy setup panicked")
        .expect("cannot bind the delay proxy");
    let addr = listener.local_addr().expect("delay proxy address");
    rt.spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((inbound, _)) = accepted else {
                continue;
            };
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = forward(inbound, upstream, rtt) => {}
                }
            });
        }
    });
    addr
}

/// One proxied connection: one RTT for the TCP handshake, then both directions pumped with
/// a one-way delay of `rtt / 2`, until both sides have closed.
async fn forward(inbound: TcpStream, upstream: SocketAddr, rtt: Duration) {
    tokio::time::sleep(rtt).await;
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let one_way = rtt / 2;
    tokio::join!(
        pump(in_read, out_write, one_way),
        pump(out_read, in_write, one_way)
    );
}

/// Copies `from` to `to`, each chunk written `delay` after it was read. The reader never
/// waits for the writer (a queue between them), so delays do not add up into throttling.
async fn pump<R, W>(mut from: R, mut to: W, delay: Duration)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Bytes)>();
    let read = async move {
        loop {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            match from.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send((Instant::now() + delay, buf.freeze())).is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` lets the writer drain what is queued, then close.
    };
    let write = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
