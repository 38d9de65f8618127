//! The system under test as child processes: Azurite, the ARM fake and the vmpool instances.
//! Every child is registered in [`Procs`]; [`KillOnDrop`] kills them all when the soak ends,
//! returns early or panics.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The well-known development account Azurite accepts.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Its well-known key (public, documented for the emulator).
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The ARM fake's bearer token, subscription and location.
pub const FAKE_TOKEN: &str = "soak-arm-token";
/// The subscription the fake serves.
pub const FAKE_SUBSCRIPTION: &str = "00000000-0000-0000-0000-00000000a0a0";
/// The resource group of the pool's VMs.
pub const RESOURCE_GROUP: &str = "vmpool-soak";
/// The region.
pub const LOCATION: &str = "westeurope";

/// Which child a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    /// The Azure Storage emulator.
    Azurite,
    /// The ARM fake.
    Fake,
    /// vmpool instance `n`.
    Vmpool(usize),
}

/// The running children, by slot.
#[derive(Debug, Default)]
pub struct Procs {
    children: BTreeMap<Slot, Child>,
}

impl Procs {
    /// Kills (SIGKILL) and reaps the child in `slot`, if any.
    pub fn kill(&mut self, slot: Slot) {
        if let Some(mut child) = self.children.remove(&slot) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills every child.
    pub fn kill_all(&mut self) {
        let slots: Vec<Slot> = self.children.keys().copied().collect();
        for slot in slots {
            self.kill(slot);
        }
    }

    /// Whether the child in `slot` has exited (or is absent).
    pub fn exited(&mut self, slot: Slot) -> bool {
        match self.children.get_mut(&slot) {
            None => true,
            Some(child) => !matches!(child.try_wait(), Ok(None)),
        }
    }

    fn insert(&mut self, slot: Slot, child: Child) {
        self.kill(slot);
        self.children.insert(slot, child);
    }

    fn pid(&self, slot: Slot) -> Option<u32> {
        self.children.get(&slot).map(Child::id)
    }
}

/// The children, shared between the tasks that start, kill and restart them.
pub type SharedProcs = Arc<Mutex<Procs>>;

/// Locks the children (a poisoned lock is still usable: the map stays consistent).
pub fn lock(procs: &SharedProcs) -> MutexGuard<'_, Procs> {
    procs.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills every child when dropped: on a normal end, an early return and a panic.
#[derive(Debug)]
pub struct KillOnDrop(pub SharedProcs);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        lock(&self.0).kill_all();
    }
}

/// A free loopback port.
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// Where the binaries and the repository are.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `target/debug` (the soak's own folder): vmpool and vmpool-arm-fake are beside it.
    pub bin_dir: PathBuf,
    /// `node_modules/.bin/azurite-table`.
    pub azurite: PathBuf,
    /// This run's folder for logs and Azurite's data, under `target/soak/`.
    pub run_dir: PathBuf,
}

impl Layout {
    /// Finds the binaries next to the running executable and Azurite in the repository.
    pub fn find(run_name: &str) -> Result<Layout, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find my executable: {e}"))?;
        let bin_dir = exe
            .parent()
            .ok_or("my executable has no folder")?
            .to_path_buf();
        for bin in ["vmpool", "vmpool-arm-fake"] {
            if !bin_dir.join(bin).exists() {
                return Err(format!(
                    "{} is missing: run `cargo build --workspace --bins` first",
                    bin_dir.join(bin).display()
                ));
            }
        }
        let azurite = bin_dir
            .ancestors()
            .chain(Path::new(env!("CARGO_MANIFEST_DIR")).ancestors())
            .map(|dir| dir.join("node_modules/.bin/azurite-table"))
            .find(|p| p.exists())
            .ok_or("node_modules/.bin/azurite-table is missing: run `npm ci --no-audit --no-fund` (./scripts/test.sh does)")?;
        let target = bin_dir.parent().unwrap_or(&bin_dir);
        let run_dir = target.join("soak").join(run_name);
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(run_dir.join("azurite"))
            .map_err(|e| format!("cannot create {}: {e}", run_dir.display()))?;
        Ok(Layout {
            bin_dir,
            azurite,
            run_dir,
        })
    }

    /// The log file of a child (appended to across restarts).
    pub fn log(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.log"))
    }
}

fn log_file(path: &Path) -> Result<(File, File), String> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let copy = file
        .try_clone()
        .map_err(|e| format!("cannot share {}: {e}", path.display()))?;
    Ok((file, copy))
}

fn base_command(program: &Path, log: &Path) -> Result<Command, String> {
    let (out, err) = log_file(log)?;
    let mut cmd = Command::new(program);
    // Nothing from the caller's environment reaches the system under test: no storage
    // account, credential or proxy can leak in.
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    Ok(cmd)
}

/// Waits until something accepts connections on `port`, or the child exits, or 60 s pass.
pub async fn wait_listening(procs: &SharedProcs, slot: Slot, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if lock(procs).exited(slot) {
            return Err(format!("{slot:?} exited before listening on port {port}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{slot:?} did not listen on port {port} within 60 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Azurite's table service on a fixed port, with its data on disk so a restart keeps it.
#[derive(Debug, Clone)]
pub struct AzuriteSpec {
    /// Its port.
    pub port: u16,
}

impl AzuriteSpec {
    /// The connection string vmpool uses.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};TableEndpoint=http://127.0.0.1:{}/{ACCOUNT};",
            self.port
        )
    }

    /// Starts (or restarts) it and waits until it listens.
    pub async fn start(&self, layout: &Layout, procs: &SharedProcs) -> Result<(), String> {
        let mut cmd = base_command(&layout.azurite, &layout.log("azurite"))?;
        if let Some(home) = std::env::var_os("HOME") {
            cmd.env("HOME", home);
        }
        cmd.args(["--tableHost", "127.0.0.1", "--tablePort"])
            .arg(self.port.to_string())
            .arg("--location")
            .arg(layout.run_dir.join("azurite"))
            .arg("--disableTelemetry")
            .arg("--skipApiVersionCheck");
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start Azurite: {e}"))?;
        lock(procs).insert(Slot::Azurite, child);
        wait_listening(procs, Slot::Azurite, self.port).await
    }

    /// Stops it gracefully (SIGINT makes Azurite save its data first), SIGKILL after 10 s.
    pub async fn stop(&self, procs: &SharedProcs) {
        stop_gracefully(procs, Slot::Azurite, "-INT").await;
    }
}

/// Sends `signal` (`-INT`, `-TERM`) to the child in `slot`, waits up to 10 s for it to exit,
/// then kills it.
pub async fn stop_gracefully(procs: &SharedProcs, slot: Slot, signal: &str) {
    let pid = lock(procs).pid(slot);
    if let Some(pid) = pid {
        let _ = tokio::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lock(procs).exited(slot) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    lock(procs).kill(slot);
}

/// The ARM fake on a port, with short latencies.
pub async fn start_fake(layout: &Layout, procs: &SharedProcs, port: u16) -> Result<(), String> {
    let mut cmd = base_command(
        &layout.bin_dir.join("vmpool-arm-fake"),
        &layout.log("arm-fake"),
    )?;
    cmd.env("VMPOOL_FAKE_PORT", port.to_string())
        .env("VMPOOL_FAKE_TOKEN", FAKE_TOKEN)
        .env("VMPOOL_FAKE_SUBSCRIPTION", FAKE_SUBSCRIPTION)
        .env("VMPOOL_FAKE_LOCATION", LOCATION)
        .env("VMPOOL_FAKE_CREATE_SECS", "3")
        .env("VMPOOL_FAKE_START_SECS", "2")
        .env("VMPOOL_FAKE_DEALLOCATE_SECS", "2")
        .env("VMPOOL_FAKE_DELETE_SECS", "1");
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the ARM fake: {e}"))?;
    lock(procs).insert(Slot::Fake, child);
    wait_listening(procs, Slot::Fake, port).await
}

/// The vmpool instances: each one's spec (its settings change with the rollout) behind a
/// lock held while it restarts, so a fault's restart and the rollout's never overlap on one
/// instance.
pub type Instances = Arc<Vec<tokio::sync::Mutex<VmpoolSpec>>>;

/// How one vmpool instance is run.
#[derive(Debug, Clone)]
pub struct VmpoolSpec {
    /// Its number (0, 1, 2).
    pub index: usize,
    /// Its port.
    pub port: u16,
    /// Its settings.
    pub env: Vec<(String, String)>,
}

impl VmpoolSpec {
    /// Its log file name.
    pub fn log_name(&self) -> String {
        format!("vmpool-{}", self.index)
    }

    /// Starts (or restarts) it and waits until it listens.
    pub async fn start(&self, layout: &Layout, procs: &SharedProcs) -> Result<(), String> {
        let mut cmd = base_command(
            &layout.bin_dir.join("vmpool"),
            &layout.log(&self.log_name()),
        )?;
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start vmpool {}: {e}", self.index))?;
        lock(procs).insert(Slot::Vmpool(self.index), child);
        wait_listening(procs, Slot::Vmpool(self.index), self.port).await
    }
}
