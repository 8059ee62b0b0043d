use super::*;

fn limits(max_total: usize, max_per_peer: usize) -> Arc<Limits> {
    Arc::new(Limits {
        max_total,
        max_per_peer,
        counts: Mutex::default(),
    })
}

fn open(limits: &Limits) -> (usize, usize) {
    let counts = limits.counts.lock().unwrap();
    (counts.total, counts.per_peer.len())
}

#[test]
fn per_peer_cap_leaves_room_for_others() {
    let l = limits(4, 2);
    let a: Vec<Slot> = (0..2).map(|_| l.admit(Peer::Uid(1000)).unwrap()).collect();
    assert_eq!(l.admit(Peer::Uid(1000)).unwrap_err(), Refused::Peer);
    let b = l.admit(Peer::Uid(1001)).unwrap();
    let tcp = l.admit(Peer::Tcp).unwrap();
    // The total is reached: even a peer under its own cap is refused.
    assert_eq!(l.admit(Peer::Uid(1002)).unwrap_err(), Refused::Total);
    assert_eq!(open(&l), (4, 3));
    drop(b);
    drop(tcp);
    assert_eq!(l.admit(Peer::Uid(1000)).unwrap_err(), Refused::Peer);
    let c = l.admit(Peer::Uid(1002)).unwrap();
    drop(a);
    drop(c);
    assert_eq!(
        open(&l),
        (0, 0),
        "slots are given back and empty peers forgotten"
    );
}

#[test]
fn refusals_change_no_count() {
    let l = limits(1, 1);
    let a = l.admit(Peer::Uid(1)).unwrap();
    for _ in 0..10 {
        assert!(l.admit(Peer::Uid(1)).is_err());
        assert!(l.admit(Peer::Uid(2)).is_err());
    }
    assert_eq!(open(&l), (1, 1));
    drop(a);
    assert_eq!(open(&l), (0, 0));
}

#[test]
fn the_cap_keeps_descriptors_in_reserve() {
    // systemd's default soft limit, if it cannot be raised: a quarter stays free.
    assert_eq!(effective_max(1024, 1024).unwrap(), 768);
    assert_eq!(effective_max(100, 1024).unwrap(), 100);
    // Small limits keep at least 128.
    assert_eq!(effective_max(1024, 256).unwrap(), 128);
    assert_eq!(effective_max(1024, 16384).unwrap(), 1024);
    assert_eq!(effective_max(1 << 20, u64::MAX).unwrap(), 1 << 20);
    let err = effective_max(1024, 128).unwrap_err();
    assert!(err.to_string().contains("LimitNOFILE"), "{err}");
}

#[test]
fn handshake_completes_with_the_first_frame() {
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS with two settings (12 bytes).
    preface.extend_from_slice(&[0, 0, 12, 4, 0, 0, 0, 0, 0]);
    preface.extend_from_slice(&[0; 12]);
    let mut whole = Handshake::default();
    assert!(whole.read(&preface));
    // Byte by byte, it completes exactly at the last byte of the frame.
    let mut split = Handshake::default();
    for (i, b) in preface.iter().enumerate() {
        assert_eq!(split.read(&[*b]), i == preface.len() - 1, "byte {i}");
    }
    // An empty SETTINGS completes with its header.
    let mut empty = Handshake::default();
    assert!(!empty.read(&preface[..PREFACE_LEN]));
    assert!(empty.read(&[0, 0, 0, 4, 0, 0, 0, 0, 0]));
    // A frame header claiming 16 MiB: not complete until that much arrived.
    let mut big = Handshake::default();
    assert!(!big.read(&preface[..PREFACE_LEN]));
    assert!(!big.read(&[0xff, 0xff, 0xff, 4, 0, 0, 0, 0, 0]));
    assert!(!big.read(&vec![0; 1 << 20]));
}

#[test]
fn idle_means_no_request_since_the_last_check() {
    let activity = Arc::new(Activity::default());
    let mut seen = 0;
    assert!(activity.idle_since(&mut seen));
    let open = activity.clone().begin();
    assert!(!activity.idle_since(&mut seen), "a request is open");
    assert!(!activity.idle_since(&mut seen), "still open");
    drop(open);
    assert!(
        !activity.idle_since(&mut seen),
        "a request ended since the last check"
    );
    assert!(activity.idle_since(&mut seen));
    drop(activity.clone().begin());
    assert!(
        !activity.idle_since(&mut seen),
        "one began and ended in between"
    );
    assert!(activity.idle_since(&mut seen));
}

const TIMEOUTS: Timeouts = Timeouts {
    handshake: Duration::from_secs(5),
    idle: Duration::from_secs(60),
};

fn conn() -> (Conn<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
    let (server, client) = tokio::io::duplex(1024);
    let slot = limits(1, 1).admit(Peer::Tcp).unwrap();
    (Conn::new(server, slot, TIMEOUTS), client)
}

fn handshake() -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    bytes
}

#[tokio::test(start_paused = true)]
async fn a_silent_caller_is_cut_off_at_the_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut conn, mut client) = conn();
    let start = Instant::now();
    // Most of the preface is not enough.
    client.write_all(&handshake()[..30]).await.unwrap();
    let mut buf = [0; 64];
    assert_eq!(conn.read(&mut buf).await.unwrap(), 30);
    let err = conn.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(start.elapsed(), TIMEOUTS.handshake);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_ends_and_a_busy_one_does_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut conn, mut client) = conn();
    client.write_all(&handshake()).await.unwrap();
    let mut buf = [0; 64];
    assert_eq!(conn.read(&mut buf).await.unwrap(), handshake().len());
    let start = Instant::now();

    // A request open (a WatchToken stream) across several idle timeouts.
    let activity = conn.activity.clone();
    let open = activity.clone().begin();
    let read = tokio::time::timeout(TIMEOUTS.idle * 5, conn.read(&mut buf)).await;
    assert!(read.is_err(), "closed while a request was open");
    // The request ends; the connection ends one to two idle timeouts later, as end of stream.
    drop(open);
    let ended = Instant::now();
    assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
    let idle = ended.elapsed();
    assert!(
        idle >= TIMEOUTS.idle && idle <= TIMEOUTS.idle * 2,
        "closed {idle:?} after the last request"
    );
    assert_eq!(conn.read(&mut buf).await.unwrap(), 0, "stays ended");
    assert!(start.elapsed() >= TIMEOUTS.idle * 6);
}
