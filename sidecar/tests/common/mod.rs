//! What the sidecar's loopback tests share: the real `quiesce-sidecar` and `demo-app`
//! processes (killed on drop, their output kept), one test at a time, a minimal HTTP GET, the
//! kubelet's preStop call, and a stand-in for kube-proxy taking a pod out of rotation.
//! Each test binary uses a part of it.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use quiesce_api::constants::SIDECAR_DRAIN_PATH;
use quiesce_loadgen::Targets;
use serde_json::Value;

pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

pub fn demo_app_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let sidecar = PathBuf::from(env!("CARGO_BIN_EXE_quiesce-sidecar"));
            let path = sidecar.with_file_name("demo-app");
            // demo-app is another package's binary: build it once if needed.
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "-q", "-p", "demo-app"]);
            if sidecar.parent().is_some_and(|d| d.ends_with("release")) {
                build.arg("--release");
            }
            let st = build.status().expect("cargo build -p demo-app");
            assert!(st.success(), "building demo-app failed");
            assert!(path.exists(), "{path:?} missing");
            path
        })
        .clone()
}

/// A child process killed on drop, with its output collected.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub output: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    pub fn wait_exit(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd`, reads its stdout until `find` extracts the listening address.
pub fn start(mut cmd: Command, find: fn(&str) -> Option<SocketAddr>) -> Proc {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let output = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let out = output.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = find(&line)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr);
            }
            out.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("process did not report its address");
    Proc {
        child,
        addr,
        output,
    }
}

pub fn demo_app(version: &str, exit: &str) -> Proc {
    let mut cmd = Command::new(demo_app_bin());
    cmd.args([
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--app-version",
        version,
        "--exit-on-sigterm",
        exit,
    ]);
    start(cmd, |l| {
        l.strip_prefix("demo-app listening on ")
            .and_then(|a| a.parse().ok())
    })
}

/// Minimal HTTP/1.1 GET (status, body), loopback only.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    );
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

pub fn wait_until(bound: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The kube-proxy stand-in: once `/readyz` of `sidecar` is not 200, waits `lag` (endpoint
/// propagation) and stops routing new requests to `url`.
pub fn kube_proxy(
    targets: Targets,
    url: String,
    sidecar: SocketAddr,
    lag: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let code = tokio::task::spawn_blocking(move || get(sidecar, "/readyz").0)
                .await
                .unwrap();
            if code != 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(lag).await;
        targets.set_active(&url, false);
    })
}

/// The kubelet's preStop: GET the drain endpoint; returns (status, report, how long it took).
pub async fn prestop(sidecar: SocketAddr) -> (u16, Value, Duration) {
    let t = Instant::now();
    let (code, body) = tokio::task::spawn_blocking(move || get(sidecar, SIDECAR_DRAIN_PATH))
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    (code, v, t.elapsed())
}

/// Starts the sidecar `cmd` (its admin address read from its log line, every line in the
/// shared shape: quiesce_api::log_line) and waits until it is ready.
pub fn start_sidecar(cmd: Command) -> Proc {
    let p = start(cmd, quiesce_api::log_line::sidecar_admin_address);
    wait_until(Duration::from_secs(10), || get(p.addr, "/readyz").0 == 200);
    p
}
