//! Azurite (the Azure Storage emulator) as a child process, from `node_modules` (installed by
//! `npm ci` from the committed lockfile). Shared by the integration tests and the benchmark.
//!
//! The emulator runs under a small shell that kills it when its stdin closes, so it stops
//! when the handle is dropped and also when the test process exits in any way (a static
//! shared instance is never dropped).

#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The well-known development account and key that Azurite accepts.
pub const ACCOUNT: &str = "devstoreaccount1";
/// The well-known development key (public, documented by Microsoft).
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

// SIGINT is Azurite's graceful stop: it saves its database first (SIGTERM loses up to five
// seconds of writes with on-disk persistence). SIGKILL if it has not gone in ten seconds.
const WRAPPER: &str = r#""$@" </dev/null & pid=$!
read _line || true
kill -INT "$pid" 2>/dev/null
( sleep 10; kill -KILL "$pid" 2>/dev/null ) </dev/null >/dev/null 2>&1 & watchdog=$!
wait "$pid" 2>/dev/null
kill "$watchdog" 2>/dev/null
exit 0"#;

/// Where Azurite keeps its data.
#[derive(Debug, Clone)]
pub enum Persistence {
    /// In memory: gone when it stops.
    InMemory,
    /// On disk in this folder: survives a restart.
    OnDisk(PathBuf),
}

/// A running Azurite table service on a free loopback port.
#[derive(Debug)]
pub struct Azurite {
    port: u16,
    persistence: Persistence,
    extra_args: Vec<std::ffi::OsString>,
    child: Option<(Child, ChildStdin)>,
    log: PathBuf,
}

fn binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join("node_modules/.bin/azurite-table");
    assert!(
        bin.exists(),
        "{} is missing: run `npm ci --no-audit --no-fund` in {} (or use ./scripts/test.sh, which does)",
        bin.display(),
        root.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Azurite {
    /// Starts Azurite on a free port and waits until it accepts connections.
    pub fn start(persistence: Persistence) -> Azurite {
        Self::start_with(persistence, Vec::new())
    }

    /// Starts Azurite with extra command-line arguments (such as `--oauth basic --cert ...`).
    pub fn start_with(persistence: Persistence, extra_args: Vec<std::ffi::OsString>) -> Azurite {
        let log = std::env::temp_dir().join(format!(
            "vmpool-azurite-{}-{}.log",
            std::process::id(),
            unique()
        ));
        let mut azurite = Azurite {
            port: free_port(),
            persistence,
            extra_args,
            child: None,
            log,
        };
        azurite.restart();
        azurite
    }

    /// An emulator on a free port that is not started yet: [`Azurite::restart`] starts it.
    pub fn unstarted(persistence: Persistence) -> Azurite {
        Azurite {
            port: free_port(),
            persistence,
            extra_args: Vec::new(),
            child: None,
            log: std::env::temp_dir().join(format!(
                "vmpool-azurite-{}-{}.log",
                std::process::id(),
                unique()
            )),
        }
    }

    /// The instance shared by every test of this process (in memory; tests use their own
    /// table names). Stops when the process exits.
    pub fn shared() -> &'static Azurite {
        static SHARED: OnceLock<Azurite> = OnceLock::new();
        SHARED.get_or_init(|| Azurite::start(Persistence::InMemory))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A full connection string with `TableEndpoint`, as for a real account.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};TableEndpoint=http://127.0.0.1:{}/{ACCOUNT};",
            self.port
        )
    }

    /// Stops the emulator and waits until it has exited.
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port with the same persistence.
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg("sh")
            .arg(binary())
            .args(["--tableHost", "127.0.0.1", "--tablePort"])
            .arg(self.port.to_string())
            .arg("--disableTelemetry")
            .arg("--skipApiVersionCheck")
            .args(&self.extra_args);
        match &self.persistence {
            Persistence::InMemory => {
                cmd.arg("--inMemoryPersistence");
            }
            Persistence::OnDisk(dir) => {
                cmd.arg("--location").arg(dir);
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("an Azurite log file");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn sh to run Azurite");
        let stdin = child.stdin.take().expect("piped stdin");
        self.child = Some((child, stdin));
        self.wait_until_up();
    }

    fn wait_until_up(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                // Up: its output is only needed when it does not start.
                let _ = std::fs::remove_file(&self.log);
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|(c, _)| c.try_wait().ok().flatten())
                .is_some();
            if exited || Instant::now() > deadline {
                let mut text = String::new();
                let _ =
                    std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut text));
                panic!(
                    "Azurite did not start on port {} ({}); its output:\n{text}",
                    self.port,
                    if exited { "it exited" } else { "timed out" }
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A number unique in this process, for table names and files.
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// A fresh table name (letters and digits), so tests never share rows.
pub fn table_name(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id(), unique())
}
