//! A TCP proxy in front of Azurite that loses answers on demand, for storage faults a real
//! network can cause.

use std::sync::Arc;

/// A TCP proxy in front of Azurite that can lose the answer to the next write: the request
/// reaches Azurite and is applied, the answer never comes back.
pub struct LossyProxy {
    port: u16,
    armed: Arc<std::sync::atomic::AtomicBool>,
    silent: Arc<std::sync::atomic::AtomicBool>,
}

impl LossyProxy {
    pub async fn start(target: u16) -> LossyProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let silent = Arc::new(AtomicBool::new(false));
        let shared = armed.clone();
        let shared_silent = silent.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let armed = shared.clone();
                let silent = shared_silent.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let lose = Arc::new(AtomicBool::new(false));
                    let lose_up = lose.clone();
                    let up = tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from_client.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let chunk = &buf[..n];
                            let write = [&b"PUT "[..], b"POST ", b"DELETE ", b"MERGE "]
                                .iter()
                                .any(|m| chunk.starts_with(m));
                            if write && armed.swap(false, Ordering::SeqCst) {
                                lose_up.store(true, Ordering::SeqCst);
                            }
                            if to_server.write_all(chunk).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from_server.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if silent.load(Ordering::SeqCst) {
                            lose.store(true, Ordering::SeqCst);
                        }
                        if lose.load(Ordering::SeqCst) {
                            continue;
                        }
                        if to_client.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        LossyProxy {
            port,
            armed,
            silent,
        }
    }

    /// Every answer is lost (storage that accepts requests and never answers), or none.
    pub fn set_silent(&self, silent: bool) {
        self.silent
            .store(silent, std::sync::atomic::Ordering::SeqCst);
    }

    /// The answer to the next write is lost.
    pub fn lose_next_answer(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={};TableEndpoint=http://127.0.0.1:{}/devstoreaccount1",
            super::azurite::KEY,
            self.port
        )
    }
}
