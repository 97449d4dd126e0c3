use std::sync::Mutex;

use super::*;

/// A registry that records what the factory asked of it, and whether the listener of the test
/// had already been reached when a registration began.
struct Recording {
    fail: bool,
    listener: Option<std::net::TcpListener>,
    calls: Mutex<Vec<(&'static str, u64)>>,
    reached_before_begin: Mutex<Option<bool>>,
}

impl Recording {
    fn new(fail: bool, listener: Option<std::net::TcpListener>) -> Arc<Self> {
        if let Some(l) = &listener {
            l.set_nonblocking(true).unwrap();
        }
        Arc::new(Recording {
            fail,
            listener,
            calls: Mutex::new(Vec::new()),
            reached_before_begin: Mutex::new(None),
        })
    }

    fn calls(&self) -> Vec<(&'static str, u64)> {
        self.calls.lock().unwrap().clone()
    }
}

impl OwnSockets for Recording {
    fn begin(&self, cookie: u64) -> Result<(), ExemptionError> {
        self.calls.lock().unwrap().push(("begin", cookie));
        if let Some(l) = &self.listener {
            *self.reached_before_begin.lock().unwrap() = Some(l.accept().is_ok());
        }
        if self.fail {
            return Err(ExemptionError("map full (test)".into()));
        }
        Ok(())
    }

    fn end(&self, cookie: u64) {
        self.calls.lock().unwrap().push(("end", cookie));
    }
}

fn loopback_listener() -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

#[tokio::test]
async fn a_socket_that_cannot_be_registered_is_never_connected() {
    let (server, addr) = loopback_listener();
    server.set_nonblocking(true).unwrap();
    let own = Recording::new(true, None);
    let factory = SocketFactory::new(own.clone());
    for netns in [Netns::Connection, Netns::Gateway] {
        let err = factory
            .connect(addr, netns, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConnectError::NotExempt { dst, .. } if dst == addr),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("map full (test)"),
            "the reason is given: {err}"
        );
    }
    // Let a connection that was (wrongly) attempted arrive, then check that none did.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server.accept().map_err(|e| e.kind()).err(),
        Some(io::ErrorKind::WouldBlock),
        "the server was reached"
    );
    let calls = own.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls.iter().all(|(what, _)| *what == "begin"), "{calls:?}");
}

#[tokio::test]
async fn the_byte_stream_callers_get_the_same_refusal() {
    let (_server, addr) = loopback_listener();
    let dialer = Dialer {
        sockets: Arc::new(SocketFactory::new(Recording::new(true, None))),
        netns: Netns::Connection,
        timeout: Duration::from_secs(2),
    };
    let err = dialer.connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().starts_with("not connecting to"), "{err}");
}

#[tokio::test]
async fn a_connection_is_registered_before_its_connect_and_released_after() {
    let (server, addr) = loopback_listener();
    let own = Recording::new(false, Some(server));
    let factory = SocketFactory::new(own.clone());
    let stream = factory
        .connect(addr, Netns::Gateway, Duration::from_secs(2))
        .await
        .unwrap();
    let cookie = crate::sockopt::get_u64(&stream, libc::SO_COOKIE).unwrap();
    assert_eq!(own.calls(), vec![("begin", cookie), ("end", cookie)]);
    assert_eq!(
        *own.reached_before_begin.lock().unwrap(),
        Some(false),
        "registered only after the server was reached"
    );
    assert!(stream.nodelay().unwrap());
}

#[tokio::test]
async fn a_failed_connect_is_reported_and_released() {
    // A port nobody listens on: bind one, note it, close it.
    let (server, addr) = loopback_listener();
    drop(server);
    let own = Recording::new(false, None);
    let factory = SocketFactory::new(own.clone());
    let err = factory
        .connect(addr, Netns::Gateway, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ConnectError::Connect { source, .. }
            if source.kind() == io::ErrorKind::ConnectionRefused),
        "{err:?}"
    );
    let calls = own.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!((calls[0].0, calls[1].0), ("begin", "end"));
    assert_eq!(calls[0].1, calls[1].1);
}

#[tokio::test]
async fn a_connect_abandoned_by_its_caller_is_released() {
    // A listener whose accept queue is full drops further SYNs: the connect hangs.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let own = Recording::new(false, None);
    let factory = SocketFactory::new(own.clone());
    // The caller gives up first (its future is dropped mid-connect).
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        factory.connect(addr, Netns::Gateway, Duration::from_secs(30)),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "the connect was expected to hang: {gave_up:?}"
    );
    let calls = own.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!((calls[0].0, calls[1].0), ("begin", "end"));
    // The factory's own timeout: the same release, and a timeout error naming the address.
    let err = factory
        .connect(addr, Netns::Gateway, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Timeout { dst, .. } if dst == addr),
        "{err:?}"
    );
    assert_eq!(own.calls().len(), 4);
    drop(fillers);
}
