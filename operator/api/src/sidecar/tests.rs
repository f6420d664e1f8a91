//! The environment round trip, the values on the wire and how bad values are reported.

use std::collections::HashMap;

use super::*;

fn observe() -> SidecarEnv {
    SidecarEnv {
        app_ports: vec![8080, 9090],
        admin_port: 9901,
        drain_mode: DrainMode::Observe,
        app_shutdown: AppShutdown::Immediate,
        endpoint_timeout: Duration::from_secs(10),
        quiet_period: Duration::from_millis(1000),
        drain_timeout: Duration::from_secs(30),
        proxy_routes: Vec::new(),
        probe: SidecarProbe::Tcp { port: None },
        log_format: "json".into(),
        fail_open_after_seconds: 600,
    }
}

fn proxy() -> SidecarEnv {
    SidecarEnv {
        app_ports: vec![8080],
        admin_port: 9902,
        drain_mode: DrainMode::Proxy,
        app_shutdown: AppShutdown::Graceful,
        endpoint_timeout: Duration::from_millis(2500),
        quiet_period: Duration::from_millis(250),
        drain_timeout: Duration::from_secs(5),
        proxy_routes: vec![(15001, 8080), (15002, 8080)],
        probe: SidecarProbe::Http {
            port: 8080,
            path: "/healthz".into(),
            https: false,
            headers: Vec::new(),
        },
        log_format: "plain".into(),
        fail_open_after_seconds: 30,
    }
}

fn round_trip(e: &SidecarEnv) -> SidecarEnv {
    let vars: HashMap<String, String> = e.to_env().into_iter().collect();
    SidecarEnv::from_env(|name| vars.get(name).cloned()).expect("reads back")
}

#[test]
fn the_environment_reads_back_as_written() {
    for e in [
        observe(),
        proxy(),
        SidecarEnv {
            probe: SidecarProbe::None,
            ..observe()
        },
        SidecarEnv {
            probe: SidecarProbe::Tcp { port: Some(9090) },
            ..observe()
        },
        SidecarEnv {
            app_ports: Vec::new(),
            probe: SidecarProbe::Http {
                port: 8443,
                path: "/ready?full=1".into(),
                https: true,
                headers: vec![
                    ("Host".into(), "web.example".into()),
                    ("X-Probe".into(), "a, b: c".into()),
                ],
            },
            ..observe()
        },
        SidecarEnv {
            probe: SidecarProbe::Grpc {
                port: 9090,
                service: "shop.Cart".into(),
            },
            ..observe()
        },
        SidecarEnv {
            probe: SidecarProbe::Grpc {
                port: 9090,
                service: String::new(),
            },
            ..observe()
        },
    ] {
        assert_eq!(round_trip(&e), e);
    }
}

#[test]
fn the_values_on_the_wire_are_the_sidecars_flags() {
    let vars = proxy().to_env();
    let get = |name: &str| {
        vars.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get(env::QUIESCE_MODE), Some("kubernetes"));
    assert_eq!(get(env::QUIESCE_DRAIN_MODE), Some("proxy"));
    assert_eq!(get(env::QUIESCE_APP_SHUTDOWN), Some("graceful"));
    assert_eq!(get(env::QUIESCE_ENDPOINT_TIMEOUT), Some("2500ms"));
    assert_eq!(get(env::QUIESCE_QUIET_PERIOD), Some("250ms"));
    assert_eq!(get(env::QUIESCE_DRAIN_TIMEOUT), Some("5s"));
    assert_eq!(get(env::QUIESCE_PROXY_PORTS), Some("15001:8080,15002:8080"));
    assert_eq!(get(env::QUIESCE_ADMIN_PORT), Some("9902"));
    assert_eq!(get(env::QUIESCE_PROBE_SCHEME), None, "http is the default");
    assert_eq!(get(env::QUIESCE_PROBE_HEADERS), None);
    assert_eq!(get(env::QUIESCE_PROBE), Some("http"));
    assert_eq!(get(env::QUIESCE_PROBE_PATH), Some("/healthz"));
    assert_eq!(get("QUIESCE_FAIL_OPEN_AFTER_SECONDS"), Some("30"));
    let observe = observe().to_env();
    assert!(!observe.iter().any(|(n, _)| n == env::QUIESCE_PROXY_PORTS));
    assert!(!observe.iter().any(|(n, _)| n == env::QUIESCE_PROBE_PORT));
}

#[test]
fn bad_values_name_their_variable() {
    let mut vars: HashMap<String, String> = observe().to_env().into_iter().collect();
    vars.insert(env::QUIESCE_DRAIN_MODE.into(), "mirror".into());
    let err = SidecarEnv::from_env(|n| vars.get(n).cloned()).unwrap_err();
    assert_eq!(err.var, env::QUIESCE_DRAIN_MODE);
    assert!(err.to_string().contains("observe, proxy"), "{err}");
    vars.remove(env::QUIESCE_DRAIN_MODE);
    let err = SidecarEnv::from_env(|n| vars.get(n).cloned()).unwrap_err();
    assert_eq!(err.to_string(), "QUIESCE_DRAIN_MODE: missing");
}

#[test]
fn enums_parse_the_lowercase_values_in_any_case() {
    assert_eq!("proxy".parse::<DrainMode>(), Ok(DrainMode::Proxy));
    assert_eq!("Observe".parse::<DrainMode>(), Ok(DrainMode::Observe));
    assert_eq!("GRACEFUL".parse::<AppShutdown>(), Ok(AppShutdown::Graceful));
    assert_eq!(
        "immediate".parse::<AppShutdown>(),
        Ok(AppShutdown::Immediate)
    );
    assert!("sideways".parse::<DrainMode>().is_err());
    for m in [DrainMode::Observe, DrainMode::Proxy] {
        assert_eq!(m.env_value().parse::<DrainMode>(), Ok(m));
        assert_eq!(m.env_value(), m.as_str().to_ascii_lowercase());
    }
}

#[test]
fn no_app_ports_is_an_empty_list_not_a_guess() {
    let e = SidecarEnv {
        app_ports: Vec::new(),
        ..observe()
    };
    let vars = e.to_env();
    assert!(vars.contains(&(env::QUIESCE_APP_PORTS.to_owned(), String::new())));
    assert_eq!(round_trip(&e).app_ports, Vec::<u16>::new());
}

#[test]
fn probe_headers_are_one_per_line() {
    let h = vec![
        ("Host".to_owned(), "web.example".to_owned()),
        ("Authorization".to_owned(), "Bearer a:b".to_owned()),
    ];
    let s = headers_to_env(&h);
    assert_eq!(s, "Host: web.example\nAuthorization: Bearer a:b");
    assert_eq!(headers_from_env(&s).unwrap(), h);
    assert_eq!(headers_from_env("").unwrap(), Vec::new());
    assert!(headers_from_env("no colon").is_err());
    assert!(headers_from_env(": value").is_err());
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert!(parse_duration("1.5s").is_err());
    assert!(parse_duration("-1s").is_err());
    assert_eq!(parse_duration("24h").unwrap(), MAX_DURATION);
    assert!(parse_duration("86401").is_err());
    assert!(parse_duration("18446744073709551615s").is_err());
}
