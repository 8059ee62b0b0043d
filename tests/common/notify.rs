//! A stand-in for systemd's notify socket (`NOTIFY_SOCKET`): it collects the daemon's sd_notify
//! datagrams with their arrival times.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::eventually;

/// sd_notify datagrams with their arrival times, in the order they came.
pub struct NotifySocket {
    pub path: PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    /// Binds `dir/notify.sock` and collects from it until the runtime ends.
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push((Instant::now(), text));
            }
        });
        NotifySocket { path, messages }
    }

    pub fn all(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
    }

    /// The first datagram with the line `what` (e.g. `READY=1`), waiting up to 15 s for it.
    pub async fn first(&self, what: &str) -> (Instant, String) {
        eventually(Duration::from_secs(15), what, || async {
            self.all()
                .into_iter()
                .find(|(_, m)| m.lines().any(|l| l == what))
        })
        .await
    }

    /// How many datagrams with the line `line` arrived from `from` on.
    pub fn count_since(&self, from: Instant, line: &str) -> usize {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, m)| *t >= from && m.lines().any(|l| l == line))
            .count()
    }
}
