//! A TCP proxy of the test's own that can be cut and restored: what a daemon sees when
//! a server it talks to (PostgreSQL, the Kafka broker) goes away and comes back,
//! without stopping a server other tests share.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::wait_for;

/// Forwards every connection to its upstream; [`Proxy::cut`] cuts them all and
/// refuses new ones until the returned [`Outage`] is dropped.
pub struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    upstream: Arc<OnceLock<String>>,
}

impl Proxy {
    /// A proxy to `upstream` (`HOST:PORT`).
    pub fn start(upstream: &str) -> Proxy {
        let p = Proxy::listen();
        p.forward_to(upstream);
        p
    }

    /// A proxy listening on a free port, forwarding nowhere yet (connections are
    /// dropped): for a server that must be told the proxy's address before it starts,
    /// as a Kafka broker advertises the address its clients connect to.
    pub fn listen() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = Proxy {
            port,
            up: Arc::new(AtomicBool::new(true)),
            conns: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            upstream: Arc::new(OnceLock::new()),
        };
        let (up, conns, stop, upstream) = (
            p.up.clone(),
            p.conns.clone(),
            p.stop.clone(),
            p.upstream.clone(),
        );
        std::thread::spawn(move || {
            let mut listener = Some(listener);
            while !stop.load(Ordering::Acquire) {
                match (&listener, up.load(Ordering::Acquire)) {
                    // Down: no listener, so connecting is refused.
                    (Some(_), false) => listener = None,
                    (None, true) => {
                        // std sets SO_REUSEADDR, so the port can be bound again at once.
                        listener = TcpListener::bind(("127.0.0.1", port)).ok();
                    }
                    _ => {}
                }
                let Some(l) = &listener else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                l.set_nonblocking(true).unwrap();
                match l.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Some(Ok(server)) = upstream.get().map(TcpStream::connect) else {
                            continue;
                        };
                        let mut c = conns.lock().unwrap();
                        c.push(client.try_clone().unwrap());
                        c.push(server.try_clone().unwrap());
                        drop(c);
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                        pipe(server, client);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => {}
                }
            }
        });
        p
    }

    /// Where connections go from now on (set once).
    pub fn forward_to(&self, upstream: &str) {
        self.upstream.set(upstream.to_owned()).unwrap();
    }

    /// The proxy's own address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The outage: every proxied connection cut, new ones refused.
    pub fn cut(&self) -> Outage<'_> {
        self.up.store(false, Ordering::Release);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        let addr = self.addr();
        wait_for(
            "the proxy to refuse connections",
            Duration::from_secs(10),
            || TcpStream::connect(&addr).is_err().then_some(()),
        );
        Outage(self)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Copy one direction until either side closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Ends the outage when dropped (also when the test fails).
pub struct Outage<'a>(&'a Proxy);

impl Drop for Outage<'_> {
    fn drop(&mut self) {
        self.0.up.store(true, Ordering::Release);
        let addr = self.0.addr();
        wait_for("the proxy to accept again", Duration::from_secs(10), || {
            TcpStream::connect(&addr).ok().map(|_| ())
        });
    }
}
