//! The paths to the app (`--paths`): the demo app itself, and in front of it the quiesce
//! sidecar, nginx and HAProxy, each started on loopback and checked to answer.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::process::Proc;
use crate::procfs::tree;

/// One way to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathKind {
    Direct,
    Quiesce,
    Nginx,
    Haproxy,
}

impl PathKind {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "direct" => Self::Direct,
            "quiesce" => Self::Quiesce,
            "nginx" => Self::Nginx,
            "haproxy" => Self::Haproxy,
            _ => bail!("unknown path {s:?} (direct, quiesce, nginx, haproxy)"),
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Quiesce => "quiesce",
            Self::Nginx => "nginx",
            Self::Haproxy => "HAProxy",
        }
    }
}

/// A way to the app: its URLs and the processes that are the proxy (none for direct).
pub struct Target {
    pub kind: PathKind,
    /// HTTP/1.1 URL.
    pub url: String,
    /// h2c (prior knowledge) base URL, where the path has one.
    pub h2c_url: Option<String>,
    pub proc: Option<Proc>,
}

impl Target {
    /// The proxy's pid and its descendants' (nginx workers).
    pub fn pids(&self) -> Vec<u32> {
        self.proc
            .as_ref()
            .map(|p| tree(p.pid()))
            .unwrap_or_default()
    }
}

/// A free loopback port (bound, then let go: the proxies bind it right after).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Minimal HTTP/1.1 GET with `Connection: close`: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
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

fn wait_ok(addr: SocketAddr, path: &str, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(addr, path).0 != 200 {
        if Instant::now() > deadline {
            bail!("{what}: GET http://{addr}{path} did not answer 200 within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn start_app(bin_dir: &Path) -> Result<(Proc, SocketAddr)> {
    let mut cmd = Command::new(bin_dir.join("demo-app"));
    cmd.args([
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--exit-on-sigterm",
        "immediate",
    ]);
    let (p, addr) = Proc::start(
        "demo-app",
        cmd,
        Some(|l: &str| {
            l.strip_prefix("demo-app listening on ")
                .and_then(|a| a.parse::<SocketAddr>().ok())
        }),
    )?;
    let addr = addr.context("demo-app address")?;
    wait_ok(addr, "/", "demo-app")?;
    Ok((p, addr))
}

/// The sidecar as it runs in a pod (default probe period, poll interval and log level), in
/// standalone mode, its proxy on a free loopback port in front of the app.
pub fn start_quiesce(bin_dir: &Path, app: u16) -> Result<Target> {
    let mut cmd = Command::new(bin_dir.join("quiesce-sidecar"));
    let port = app.to_string();
    let route = format!("0:{app}");
    cmd.args([
        "--mode",
        "standalone",
        "--admin-bind",
        "127.0.0.1",
        "--admin-port",
        "0",
        "--app-ports",
        &port,
        "--drain-mode",
        "proxy",
        "--proxy-bind",
        "127.0.0.1",
        "--proxy-ports",
        &route,
        "--probe-path",
        "/healthz",
    ])
    .env("RUST_LOG", "info");
    let (p, admin) = Proc::start(
        "quiesce-sidecar",
        cmd,
        Some(quiesce_api::log_line::sidecar_admin_address),
    )?;
    let admin = admin.context("sidecar admin address")?;
    wait_ok(admin, "/readyz", "quiesce-sidecar")?;
    let status: serde_json::Value =
        serde_json::from_str(&get(admin, "/status").1).context("sidecar /status")?;
    let proxy: SocketAddr = status["proxy"]["listeners"][0]["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no proxy listener in /status: {status}"))?;
    wait_ok(proxy, "/", "quiesce proxy")?;
    Ok(Target {
        kind: PathKind::Quiesce,
        url: format!("http://{proxy}/"),
        // The same listener sniffs HTTP/2's preface.
        h2c_url: Some(format!("http://{proxy}")),
        proc: Some(p),
    })
}

/// nginx as an in-pod reverse proxy: one HTTP/1.1 listener and one h2c (prior knowledge)
/// listener, both to an upstream keep-alive pool of HTTP/1.1 connections to the app.
fn nginx_conf(dir: &Path, h1: u16, h2: u16, app: u16) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process on;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    http2_max_requests 10000000;
    upstream app {{
        server 127.0.0.1:{app};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{h1};
        listen 127.0.0.1:{h2} http2;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

pub fn start_nginx(bin: &str, dir: &Path, app: u16) -> Result<Target> {
    let (h1, h2) = (free_port()?, free_port()?);
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, h1, h2, app))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-e")
        .arg(dir.join("nginx-error.log"))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf);
    let (p, _) = Proc::start::<()>("nginx", cmd, None)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], h1));
    wait_ok(addr, "/", "nginx").with_context(|| {
        std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
    })?;
    Ok(Target {
        kind: PathKind::Nginx,
        url: format!("http://{addr}/"),
        h2c_url: Some(format!("http://127.0.0.1:{h2}")),
        proc: Some(p),
    })
}

/// HAProxy as an in-pod reverse proxy: an HTTP/1.1 frontend and an h2c one, to one server on
/// loopback over HTTP/1.1 with idle connections shared between requests (`http-reuse always`).
fn haproxy_conf(h1: u16, h2: u16, app: u16) -> String {
    format!(
        r#"global
    maxconn 8192

defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 75s
    timeout http-keep-alive 75s
    option http-keep-alive
    http-reuse always

frontend h1
    bind 127.0.0.1:{h1}
    default_backend app

frontend h2c
    bind 127.0.0.1:{h2} proto h2
    default_backend app

backend app
    server app 127.0.0.1:{app}
"#
    )
}

pub fn start_haproxy(bin: &str, dir: &Path, app: u16) -> Result<Target> {
    let (h1, h2) = (free_port()?, free_port()?);
    let conf = dir.join("haproxy.cfg");
    std::fs::write(&conf, haproxy_conf(h1, h2, app))?;
    let mut cmd = Command::new(bin);
    // -db: foreground, no daemon.
    cmd.arg("-db").arg("-f").arg(&conf);
    let (mut p, _) = Proc::start::<()>("haproxy", cmd, None)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], h1));
    if let Err(e) = wait_ok(addr, "/", "haproxy") {
        p.check_running()?;
        return Err(e);
    }
    Ok(Target {
        kind: PathKind::Haproxy,
        url: format!("http://{addr}/"),
        h2c_url: Some(format!("http://127.0.0.1:{h2}")),
        proc: Some(p),
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_listen_on_loopback_only() {
        let n = nginx_conf(Path::new("/tmp/x"), 1001, 1002, 8080);
        assert!(n.contains("listen 127.0.0.1:1001;") && n.contains("listen 127.0.0.1:1002 http2;"));
        assert!(n.contains("keepalive 64;") && n.contains("proxy_set_header Connection \"\";"));
        let h = haproxy_conf(1001, 1002, 8080);
        assert!(h.contains("bind 127.0.0.1:1001\n") && h.contains("http-reuse always"));
        assert!(h.contains("server app 127.0.0.1:8080"));
    }
}
