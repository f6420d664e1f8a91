//! Unit tests of the flags and of [`Args::validate`], the webhook's environment read back
//! among them.

use clap::Parser;
use quiesce_api::constants::SIDECAR_ADMIN_PORT;
use quiesce_api::sidecar::env::*;

use super::*;

fn args(extra: &[&str]) -> Args {
    let mut v = vec!["quiesce-sidecar"];
    v.extend_from_slice(extra);
    Args::try_parse_from(v).expect("flags parse")
}

#[test]
fn defaults_fit_a_typical_http_app_in_standalone_mode() {
    let c = args(&["--mode", "standalone"]).validate().unwrap();
    assert_eq!(c.app_ports, vec![8080]);
    assert_eq!(c.admin_port, SIDECAR_ADMIN_PORT);
    assert_eq!(c.probe.kind, ProbeKind::Http);
    assert_eq!(c.probe.port, 8080);
    assert_eq!(c.probe.status, (200, 399));
    assert_eq!(c.drain.quiet_period, Duration::from_secs(1));
    assert_eq!(c.drain.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.worker_threads, 1, "one runtime thread unless asked");
    assert!(c.pod.is_none());
}

#[test]
fn kubernetes_mode_needs_the_downward_api() {
    // Flags set explicitly so the test does not depend on the environment.
    let err = args(&["--pod-name", "", "--pod-namespace", ""])
        .validate()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("POD_NAME, POD_NAMESPACE"), "{msg}");
    let ok = args(&[
        "--pod-name",
        "web-1",
        "--pod-namespace",
        "ns",
        "--pod-ip",
        "10.1.2.3",
    ])
    .validate()
    .unwrap();
    assert_eq!(ok.pod.unwrap().ip.to_string(), "10.1.2.3");
}

#[test]
fn every_problem_is_reported_at_start() {
    let err = args(&[
        "--mode",
        "standalone",
        "--app-ports",
        "8080,9901",
        "--probe-status",
        "abc",
        "--probe-timeout",
        "5s",
        "--probe-period",
        "1s",
        "--drain-mode",
        "proxy",
        "--proxy-ports",
        "15001:7070",
        "--quiet-period",
        "40s",
    ])
    .validate()
    .unwrap_err();
    assert_eq!(err.0.len(), 5, "{err}");
    let msg = err.to_string();
    for needle in [
        "--admin-port 9901",
        "--probe-status",
        "--probe-timeout",
        "--proxy-ports: upstream 7070",
        "--quiet-period",
    ] {
        assert!(msg.contains(needle), "{needle} missing in {msg}");
    }
}

#[test]
fn proxy_mode_needs_routes_to_app_ports_on_free_listen_ports() {
    let base = ["--mode", "standalone", "--drain-mode", "proxy"];
    let err = args(&base).validate().unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(err.0[0].contains("needs --proxy-ports"), "{err}");

    let mut v = base.to_vec();
    v.extend([
        "--app-ports",
        "8080,9090",
        "--proxy-ports",
        "15001:8080, 15002:9090",
    ]);
    let c = args(&v).validate().unwrap();
    let p = c.proxy.expect("proxy settings");
    assert_eq!(p.routes, vec![(15001, 8080), (15002, 9090)]);
    // Default idle close: the quiet period.
    assert_eq!(p.idle_close, c.drain.quiet_period);

    let mut v = base.to_vec();
    v.extend([
        "--app-ports",
        "8080",
        "--proxy-ports",
        "8080:8080,9901:8080,15001:8080,15001:8080,15003:1234",
        "--proxy-idle-close",
        "0s",
    ]);
    let err = args(&v).validate().unwrap_err();
    let msg = err.to_string();
    for needle in [
        "listen port 8080 is an app port",
        "listen port 9901 is also the admin port",
        "listen port 15001 appears twice",
        "upstream 1234 is not one of --app-ports",
        "--proxy-idle-close must be more than 0",
    ] {
        assert!(msg.contains(needle), "{needle} missing in {msg}");
    }
    assert_eq!(err.0.len(), 5, "{err}");

    let mut v = base.to_vec();
    v.extend(["--proxy-ports", "15001-8080"]);
    assert!(args(&v).validate().unwrap_err().0[0].contains("not LISTEN:UPSTREAM"));
    let err = args(&["--mode", "standalone", "--proxy-ports", "15001:8080"])
        .validate()
        .unwrap_err();
    assert!(
        err.0[0].contains("only used with --drain-mode proxy"),
        "{err}"
    );
    assert!(
        args(&["--mode", "standalone"])
            .validate()
            .unwrap()
            .proxy
            .is_none()
    );
}

/// Parses `(variable, value)` pairs as the process environment would be: each as the flag
/// clap binds to that variable. Variables no flag reads (the fail-open timeout, read by
/// [`crate::fail_open`]) are returned.
fn from_env_pairs(pairs: &[(String, String)]) -> (Args, Vec<(String, String)>) {
    use clap::CommandFactory;
    let cmd = Args::command();
    let mut argv = vec!["quiesce-sidecar".to_owned()];
    let mut unread = Vec::new();
    for (name, value) in pairs {
        let flag = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
            .and_then(|a| a.get_long());
        match flag {
            Some(long) => argv.push(format!("--{long}={value}")),
            None => unread.push((name.clone(), value.clone())),
        }
    }
    (Args::try_parse_from(argv).expect("flags parse"), unread)
}

#[test]
fn the_webhooks_environment_is_what_the_sidecar_reads() {
    use quiesce_api::{SidecarEnv, SidecarProbe, constants::SIDECAR_FAIL_OPEN_ENV};
    let observe = SidecarEnv {
        app_ports: vec![8080, 9090],
        admin_port: 9901,
        drain_mode: DrainMode::Observe,
        app_shutdown: AppShutdown::Graceful,
        endpoint_timeout: Duration::from_secs(10),
        quiet_period: Duration::from_millis(1000),
        drain_timeout: Duration::from_secs(30),
        proxy_routes: Vec::new(),
        probe: SidecarProbe::Tcp { port: None },
        log_format: "plain".into(),
        fail_open_after_seconds: 600,
    };
    let proxy = SidecarEnv {
        app_ports: vec![8080],
        admin_port: 9903,
        drain_mode: DrainMode::Proxy,
        app_shutdown: AppShutdown::Immediate,
        endpoint_timeout: Duration::from_millis(2500),
        quiet_period: Duration::from_millis(250),
        drain_timeout: Duration::from_secs(5),
        proxy_routes: vec![(15001, 8080)],
        probe: SidecarProbe::Http {
            port: 8080,
            path: "/healthz".into(),
            https: false,
            headers: Vec::new(),
        },
        log_format: "json".into(),
        fail_open_after_seconds: 30,
    };
    let https_without_ports = SidecarEnv {
        app_ports: Vec::new(),
        probe: SidecarProbe::Http {
            port: 8443,
            path: "/ready".into(),
            https: true,
            headers: vec![
                ("Host".into(), "web.example".into()),
                ("X-Token".into(), "a:b, c".into()),
            ],
        },
        ..observe.clone()
    };
    let grpc = SidecarEnv {
        probe: SidecarProbe::Grpc {
            port: 9090,
            service: "shop.Cart".into(),
        },
        ..observe.clone()
    };
    let unprobed_without_ports = SidecarEnv {
        app_ports: Vec::new(),
        probe: SidecarProbe::None,
        ..observe.clone()
    };
    for e in [
        observe,
        proxy,
        https_without_ports,
        grpc,
        unprobed_without_ports,
    ] {
        let mut pairs = e.to_env();
        pairs.extend(
            [
                (POD_NAME, "web-1"),
                (POD_NAMESPACE, "shop"),
                (POD_IP, "10.1.2.3"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned())),
        );
        let (args, unread) = from_env_pairs(&pairs);
        let c = args.validate().expect("valid configuration");
        assert_eq!(c.mode, RunMode::Kubernetes);
        assert_eq!(c.app_ports, e.app_ports);
        assert_eq!(c.admin_port, e.admin_port);
        assert_eq!(
            c.probe.host.to_string(),
            "10.1.2.3",
            "the kubelet's target: the pod IP"
        );
        assert_eq!(c.drain.app_shutdown, e.app_shutdown);
        assert_eq!(c.drain.endpoint_timeout, e.endpoint_timeout);
        assert_eq!(c.drain.quiet_period, e.quiet_period);
        assert_eq!(c.drain.drain_timeout, e.drain_timeout);
        assert_eq!(c.proxy.is_some(), e.drain_mode == DrainMode::Proxy);
        assert_eq!(
            c.proxy.map(|p| p.routes).unwrap_or_default(),
            e.proxy_routes
        );
        let first = e.app_ports.first().copied().unwrap_or_default();
        let (kind, port, path, https, headers, service) = match &e.probe {
            SidecarProbe::Http {
                port,
                path,
                https,
                headers,
            } => (
                ProbeKind::Http,
                *port,
                path.as_str(),
                *https,
                headers.clone(),
                "",
            ),
            SidecarProbe::Grpc { port, service } => (
                ProbeKind::Grpc,
                *port,
                "/",
                false,
                Vec::new(),
                service.as_str(),
            ),
            SidecarProbe::Tcp { port } => (
                ProbeKind::Tcp,
                port.unwrap_or(first),
                "/",
                false,
                Vec::new(),
                "",
            ),
            SidecarProbe::None => (ProbeKind::None, first, "/", false, Vec::new(), ""),
        };
        assert_eq!(
            (c.probe.kind, c.probe.port, c.probe.path.as_str()),
            (kind, port, path)
        );
        assert_eq!(
            (
                c.probe.https,
                &c.probe.headers,
                c.probe.grpc_service.as_str()
            ),
            (https, &headers, service)
        );
        let log = if e.log_format == "json" {
            LogFormat::Json
        } else {
            LogFormat::Plain
        };
        assert_eq!(c.log_format, log);
        assert_eq!(c.pod.map(|p| p.name).as_deref(), Some("web-1"));
        // The one variable no flag reads is the fail-open timeout.
        assert_eq!(
            unread,
            vec![(
                SIDECAR_FAIL_OPEN_ENV.to_owned(),
                e.fail_open_after_seconds.to_string()
            )]
        );
        assert_eq!(
            crate::fail_open::parse_seconds(&unread[0].1),
            Some(Duration::from_secs(e.fail_open_after_seconds as u64))
        );
    }
}

#[test]
fn no_app_ports_means_none_tracked_and_a_probe_needs_its_own_port() {
    let c = args(&["--mode", "standalone", "--app-ports", "", "--probe", "none"])
        .validate()
        .unwrap();
    assert!(c.app_ports.is_empty());
    let err = args(&["--mode", "standalone", "--app-ports", ""])
        .validate()
        .unwrap_err();
    assert!(err.0[0].contains("needs --probe-port"), "{err}");
    let c = args(&[
        "--mode",
        "standalone",
        "--app-ports",
        "",
        "--probe-port",
        "8443",
    ])
    .validate()
    .unwrap();
    assert_eq!(c.probe.port, 8443);
    let err = args(&[
        "--mode",
        "standalone",
        "--app-ports",
        "",
        "--probe",
        "none",
        "--new-connection-signal",
        "ports",
    ])
    .validate()
    .unwrap_err();
    assert!(err.0[0].contains("needs --app-ports"), "{err}");
    assert_eq!(parse_app_ports(" 80, 8080 ,").unwrap().0, vec![80, 8080]);
    assert!(parse_app_ports("http").is_err());
}

#[test]
fn probe_host_defaults_to_the_pod_ip_like_the_kubelet() {
    for ip in ["10.1.2.3", "fd00::7"] {
        let c = args(&[
            "--pod-name",
            "web-1",
            "--pod-namespace",
            "ns",
            "--pod-ip",
            ip,
        ])
        .validate()
        .unwrap();
        assert_eq!(c.probe.host.to_string(), ip);
    }
    let c = args(&["--mode", "standalone"]).validate().unwrap();
    assert_eq!(c.probe.host.to_string(), "127.0.0.1");
    let c = args(&["--mode", "standalone", "--probe-host", "::1"])
        .validate()
        .unwrap();
    assert_eq!(c.probe.host.to_string(), "::1");
}

#[test]
fn probe_scheme_and_headers() {
    let c = args(&[
        "--mode",
        "standalone",
        "--probe-scheme",
        "https",
        "--probe-headers",
        "Host: web.example\nX-Probe: 1",
    ])
    .validate()
    .unwrap();
    assert!(c.probe.https);
    assert_eq!(
        c.probe.headers,
        vec![
            ("Host".to_owned(), "web.example".to_owned()),
            ("X-Probe".to_owned(), "1".to_owned())
        ]
    );
    let err = args(&["--mode", "standalone", "--probe-headers", "Bad Name: x"])
        .validate()
        .unwrap_err();
    assert!(err.0[0].contains("not an HTTP header name"), "{err}");
    assert!(parse_probe_headers("X: a\u{7f}").is_err());
}

#[test]
fn drain_mode_and_app_shutdown_flags_take_the_api_values_in_any_case() {
    let c = args(&[
        "--mode",
        "standalone",
        "--drain-mode",
        "Proxy",
        "--proxy-ports",
        "15001:8080",
        "--app-shutdown",
        "GRACEFUL",
    ])
    .validate()
    .unwrap();
    assert!(c.proxy.is_some());
    assert_eq!(c.drain.app_shutdown, AppShutdown::Graceful);
    let v = ["quiesce-sidecar", "--drain-mode", "mirror"];
    assert!(Args::try_parse_from(v).is_err());
}

#[test]
fn bad_values_fail_to_parse() {
    let v = ["quiesce-sidecar", "--quiet-period", "1 fortnight"];
    assert!(Args::try_parse_from(v).is_err());
    let v = ["quiesce-sidecar", "--app-ports", "http"];
    assert!(Args::try_parse_from(v).is_err());
    let v = ["quiesce-sidecar", "--worker-threads", "0"];
    assert!(Args::try_parse_from(v).is_err());
}

#[test]
fn durations_and_status_ranges() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert!(parse_duration("1.5s").is_err());
    assert!(parse_duration("-1s").is_err());
    assert_eq!(parse_status_range("204").unwrap(), (204, 204));
    assert_eq!(parse_status_range("200-299").unwrap(), (200, 299));
    assert!(parse_status_range("300-200").is_err());
    assert!(parse_status_range("700").is_err());
}
