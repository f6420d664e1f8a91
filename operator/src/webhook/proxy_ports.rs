//! Proxy mode's way into the data path without privileges: named-port takeover.
//!
//! A Service whose `targetPort` is a *name* is resolved per pod by the EndpointSlice controller,
//! which searches the app containers' ports first and then the ports of restartable init
//! containers (native sidecars). So each named TCP port of the app containers is renamed
//! (`qz-<number>`) and the sidecar declares a port with the original name on its proxy
//! listener: Service traffic (kube-proxy, ingress controllers reading EndpointSlices) reaches
//! the proxy, which forwards to the app on loopback. References to the old names inside the pod
//! (probes, lifecycle hooks) are rewritten to the port number, so they still reach the app
//! directly. Nothing else changes: no iptables, no NET_ADMIN, the pod stays `restricted`.
//!
//! A Service with a numeric `targetPort` cannot be taken over this way (the operator reports
//! it on the policy); its traffic goes straight to the app.

use k8s_openapi::api::core::v1::{Container, ContainerPort, LifecycleHandler, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// First port tried for the proxy listeners; chosen above the usual app ports and below the
/// ephemeral range.
pub const FIRST_PROXY_PORT: i32 = 15001;

/// Name of the sidecar's admin port, never taken over.
pub const ADMIN_PORT_NAME: &str = "quiesce-admin";

/// One proxied port: the sidecar listens on `listen` under the app's original port `name` and
/// forwards to the app's `upstream` port on loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRoute {
    /// The app's original port name, now the sidecar's.
    pub name: String,
    /// The sidecar's listener.
    pub listen: i32,
    /// The app's port.
    pub upstream: i32,
}

impl ProxyRoute {
    /// The sidecar's port declaration.
    pub fn container_port(&self) -> ContainerPort {
        ContainerPort {
            name: Some(self.name.clone()),
            container_port: self.listen,
            protocol: Some("TCP".into()),
            ..Default::default()
        }
    }
}

/// The `(listen, upstream)` ports of `routes`, as the sidecar's `QUIESCE_PROXY_PORTS`
/// (`SidecarEnv::proxy_routes`) carries them; routes on a port outside 1..=65535 are left out.
pub fn route_ports(routes: &[ProxyRoute]) -> Vec<(u16, u16)> {
    let port = |p: i32| u16::try_from(p).ok().filter(|p| *p != 0);
    routes
        .iter()
        .filter_map(|r| Some((port(r.listen)?, port(r.upstream)?)))
        .collect()
}

/// The name an app port is renamed to (at most 15 characters, a valid IANA service name).
pub fn renamed(port: i32) -> String {
    format!("qz-{port}")
}

/// Renames every named TCP port of the app containers, rewrites references to those names to
/// numbers, and returns the routes the sidecar must serve. `reserved` are ports the sidecar
/// already uses (admin). Unnamed ports are left alone: nothing can route to them by name.
pub fn take_over_named_ports(spec: &mut PodSpec, reserved: &[i32]) -> Vec<ProxyRoute> {
    let mut used: Vec<i32> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| p.container_port)
        .chain(reserved.iter().copied())
        .collect();
    let mut routes = Vec::new();
    let mut next = FIRST_PROXY_PORT;
    for c in &mut spec.containers {
        let Some(ports) = c.ports.as_mut() else {
            continue;
        };
        for i in 0..ports.len() {
            let p = &ports[i];
            let tcp = p.protocol.as_deref().unwrap_or("TCP") == "TCP";
            let Some(name) = p.name.clone().filter(|n| !n.is_empty()) else {
                continue;
            };
            // The sidecar's own admin port has this name: a second one would make the pod
            // invalid (port names are unique in a container).
            if !tcp || name == ADMIN_PORT_NAME || routes.iter().any(|r: &ProxyRoute| r.name == name)
            {
                continue;
            }
            while used.contains(&next) {
                next += 1;
            }
            used.push(next);
            routes.push(ProxyRoute {
                name,
                listen: next,
                upstream: p.container_port,
            });
            // Port names are unique in a container: a second port of the same number (or a
            // port already named so) leaves this one unnamed — references become numbers.
            let new_name = renamed(p.container_port);
            let taken = ports.iter().any(|q| q.name.as_ref() == Some(&new_name));
            ports[i].name = (!taken).then_some(new_name);
        }
    }
    if !routes.is_empty() {
        for c in &mut spec.containers {
            rewrite_references(c, &routes);
        }
    }
    routes
}

fn rewrite_port(port: &mut IntOrString, routes: &[ProxyRoute]) {
    if let IntOrString::String(name) = port
        && let Some(r) = routes.iter().find(|r| &r.name == name)
    {
        *port = IntOrString::Int(r.upstream);
    }
}

fn rewrite_probe(probe: Option<&mut Probe>, routes: &[ProxyRoute]) {
    let Some(p) = probe else { return };
    if let Some(h) = p.http_get.as_mut() {
        rewrite_port(&mut h.port, routes);
    }
    if let Some(t) = p.tcp_socket.as_mut() {
        rewrite_port(&mut t.port, routes);
    }
}

fn rewrite_handler(handler: Option<&mut LifecycleHandler>, routes: &[ProxyRoute]) {
    let Some(h) = handler else { return };
    if let Some(g) = h.http_get.as_mut() {
        rewrite_port(&mut g.port, routes);
    }
    if let Some(t) = h.tcp_socket.as_mut() {
        rewrite_port(&mut t.port, routes);
    }
}

/// Probes and hooks that named a taken-over port keep reaching the app directly.
fn rewrite_references(c: &mut Container, routes: &[ProxyRoute]) {
    rewrite_probe(c.readiness_probe.as_mut(), routes);
    rewrite_probe(c.liveness_probe.as_mut(), routes);
    rewrite_probe(c.startup_probe.as_mut(), routes);
    if let Some(l) = c.lifecycle.as_mut() {
        rewrite_handler(l.pre_stop.as_mut(), routes);
        rewrite_handler(l.post_start.as_mut(), routes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HTTPGetAction, Lifecycle, TCPSocketAction};

    fn port(name: Option<&str>, n: i32, protocol: &str) -> ContainerPort {
        ContainerPort {
            name: name.map(Into::into),
            container_port: n,
            protocol: Some(protocol.into()),
            ..Default::default()
        }
    }

    fn spec() -> PodSpec {
        PodSpec {
            containers: vec![
                Container {
                    name: "app".into(),
                    ports: Some(vec![
                        port(Some("http"), 8080, "TCP"),
                        port(None, 9090, "TCP"),
                        port(Some("dns"), 5353, "UDP"),
                    ]),
                    readiness_probe: Some(Probe {
                        http_get: Some(HTTPGetAction {
                            port: IntOrString::String("http".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    lifecycle: Some(Lifecycle {
                        post_start: Some(LifecycleHandler {
                            tcp_socket: Some(TCPSocketAction {
                                port: IntOrString::String("http".into()),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Container {
                    name: "grpc".into(),
                    ports: Some(vec![port(Some("grpc"), 15001, "TCP")]),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn named_tcp_ports_move_to_the_proxy_and_references_become_numbers() {
        let mut s = spec();
        let routes = take_over_named_ports(&mut s, &[9901]);
        // 15001 is taken by the grpc container, so the listeners start at 15002.
        assert_eq!(
            routes,
            vec![
                ProxyRoute {
                    name: "http".into(),
                    listen: 15002,
                    upstream: 8080
                },
                ProxyRoute {
                    name: "grpc".into(),
                    listen: 15003,
                    upstream: 15001
                },
            ]
        );
        assert_eq!(route_ports(&routes), vec![(15002, 8080), (15003, 15001)]);
        let app = &s.containers[0];
        let names: Vec<_> = app.ports.iter().flatten().map(|p| p.name.clone()).collect();
        assert_eq!(
            names,
            vec![Some("qz-8080".into()), None, Some("dns".into())],
            "unnamed and UDP ports stay"
        );
        let probe_port = &app
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .port;
        assert_eq!(probe_port, &IntOrString::Int(8080));
        let hook = app.lifecycle.as_ref().unwrap().post_start.as_ref().unwrap();
        assert_eq!(
            hook.tcp_socket.as_ref().unwrap().port,
            IntOrString::Int(8080)
        );
    }

    #[test]
    fn a_pod_without_named_ports_is_not_taken_over() {
        let mut s = PodSpec {
            containers: vec![Container {
                name: "app".into(),
                ports: Some(vec![port(None, 8080, "TCP")]),
                ..Default::default()
            }],
            ..Default::default()
        };
        let before = s.clone();
        assert!(take_over_named_ports(&mut s, &[9901]).is_empty());
        assert_eq!(s, before);
    }

    /// Found by the property test operator/tests/inject_prop.rs: both would have given a
    /// container (the app's, or the sidecar's) one port name twice, a pod the apiserver rejects.
    #[test]
    fn port_names_stay_unique_in_each_container() {
        let mut s = PodSpec {
            containers: vec![Container {
                name: "app".into(),
                ports: Some(vec![
                    port(Some("http"), 15001, "TCP"),
                    port(Some("grpc"), 15001, "TCP"),
                    port(Some(ADMIN_PORT_NAME), 7000, "TCP"),
                ]),
                ..Default::default()
            }],
            ..Default::default()
        };
        let routes = take_over_named_ports(&mut s, &[9901]);
        let names: Vec<_> = routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["http", "grpc"],
            "the admin port's name is the sidecar's"
        );
        let names: Vec<_> = s.containers[0]
            .ports
            .iter()
            .flatten()
            .map(|p| p.name.as_deref())
            .collect();
        assert_eq!(names, vec![Some("qz-15001"), None, Some(ADMIN_PORT_NAME)]);
    }

    #[test]
    fn renamed_ports_are_valid_port_names() {
        for n in [1, 80, 8080, 65535] {
            let name = renamed(n);
            assert!(name.len() <= 15 && name.chars().any(|c| c.is_ascii_lowercase()));
        }
    }
}
