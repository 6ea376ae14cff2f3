//! Discovery for services run as separate processes (`order-demo serve`): the
//! `--registry` flag, and, with the cargo feature `etcd`, registration and discovery
//! through etcd.
//!
//! With `--registry etcd://HOST:PORT[/ROOT]` a served service registers its listen
//! address under the key `ROOT/services/<service>/<ip:port>` (ROOT defaults to
//! `/palisade`, the layout of `palisade::balance::discover::etcd`) under a lease it
//! keeps alive, and watches `ROOT/services/<dependency>/` for each dependency it
//! calls. A ROOT of its own keeps one system's keys apart from another's in a shared
//! etcd.
//!
//! ```
//! use order_demo::discovery::RegistryFlag;
//!
//! let RegistryFlag::Etcd(etcd) = "etcd://127.0.0.1:2379/staging".parse().unwrap() else {
//!     panic!("an etcd URL")
//! };
//! assert_eq!(etcd.endpoint(), "127.0.0.1:2379");
//! assert_eq!(etcd.prefix("catalog"), "/staging/services/catalog/");
//! assert_eq!("static".parse::<RegistryFlag>(), Ok(RegistryFlag::Static));
//! assert_eq!(
//!     "etcd://127.0.0.1".parse::<RegistryFlag>().unwrap_err(),
//!     "--registry \"etcd://127.0.0.1\": expected etcd://HOST:PORT (e.g. etcd://127.0.0.1:2379)"
//! );
//! ```

use std::net::Ipv6Addr;

/// The root of the keys when the URL names none.
pub const DEFAULT_ROOT: &str = "/palisade";

/// Where a served service finds its dependencies and registers itself: the value of
/// `--registry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryFlag {
    /// `static`: dependencies from `--endpoint` flags; the service registers nowhere.
    Static,
    /// `etcd://HOST:PORT[/ROOT]`: registration and discovery through etcd.
    Etcd(EtcdRegistry),
}

/// An etcd to register in and discover from, and the root of the keys used there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdRegistry {
    url: String,
    endpoint: String,
    root: String,
}

impl EtcdRegistry {
    /// The URL as given to `--registry`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The etcd client endpoint, `HOST:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The key prefix under which `service`'s replicas are registered.
    pub fn prefix(&self, service: &str) -> String {
        format!("{}/services/{service}/", self.root)
    }
}

impl std::str::FromStr for RegistryFlag {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        if value == "static" {
            return Ok(RegistryFlag::Static);
        }
        let bad = |why: &str| format!("--registry {value:?}: {why}");
        let Some(rest) = value.strip_prefix("etcd://") else {
            return Err(bad("expected `static` or etcd://HOST:PORT[/ROOT]"));
        };
        if rest.contains(['?', '#']) {
            return Err(bad("a query or fragment is not supported"));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let Some((host, port)) = authority
            .rsplit_once(':')
            .filter(|(host, _)| !host.is_empty())
        else {
            return Err(bad(
                "expected etcd://HOST:PORT (e.g. etcd://127.0.0.1:2379)",
            ));
        };
        let host_ok = match host.strip_prefix('[') {
            Some(v6) => v6
                .strip_suffix(']')
                .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok()),
            None => host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
        };
        if !host_ok {
            return Err(bad(&format!(
                "host {host:?} is not a host name or IP address"
            )));
        }
        if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
            return Err(bad(&format!(
                "port {port:?} is not a number from 1 to 65535"
            )));
        }
        let path = path.strip_suffix('/').unwrap_or(path);
        let root = if path.is_empty() {
            DEFAULT_ROOT.to_owned()
        } else {
            let segments_ok = path.split('/').skip(1).all(|segment| {
                !segment.is_empty()
                    && segment
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            });
            if !segments_ok {
                return Err(bad(&format!(
                    "root {path:?}: expected /NAME[/NAME...] of letters, digits, '-', '_' and '.'"
                )));
            }
            path.to_owned()
        };
        Ok(RegistryFlag::Etcd(EtcdRegistry {
            url: value.to_owned(),
            endpoint: authority.to_owned(),
            root,
        }))
    }
}

#[cfg(feature = "etcd")]
mod registration {
    use std::net::SocketAddr;
    use std::time::Duration;

    use palisade::BoxError;
    use palisade::balance::discover::etcd::{EtcdSource, Registration};

    use super::EtcdRegistry;
    use crate::stack::Replicas;

    impl EtcdRegistry {
        /// Follows the replicas of `downstream` registered in etcd, as they come and
        /// go (inside a tokio runtime). Until etcd answers, no replica is known.
        pub fn replicas(&self, downstream: &str) -> Result<Replicas, BoxError> {
            let endpoints = EtcdSource::builder(downstream, vec![self.endpoint.clone()])
                .prefix(&self.prefix(downstream))
                .build()?;
            Ok(Replicas::new(endpoints))
        }

        /// Registers `addr` as a replica of `service` under a lease of `ttl`, kept
        /// alive until the registration is deregistered or dropped; if the process
        /// dies, the key goes when the lease expires. Tries again for up to
        /// `patience` while etcd cannot be reached (it may be starting too).
        pub async fn register(
            &self,
            service: &str,
            addr: SocketAddr,
            ttl: Duration,
            patience: Duration,
        ) -> Result<Registration, BoxError> {
            let give_up = tokio::time::Instant::now() + patience;
            loop {
                let attempt = Registration::register(
                    vec![self.endpoint.clone()],
                    &self.prefix(service),
                    addr,
                    ttl,
                )
                .await;
                match attempt {
                    Ok(registration) => return Ok(registration),
                    Err(e) if tokio::time::Instant::now() >= give_up => {
                        return Err(format!(
                            "--registry {:?}: could not register {service} ({addr}) in etcd at {} \
                             within {patience:?}: {e}",
                            self.url, self.endpoint
                        )
                        .into());
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(value: &str) -> EtcdRegistry {
        match value.parse::<RegistryFlag>() {
            Ok(RegistryFlag::Etcd(etcd)) => etcd,
            other => panic!("{value}: {other:?}"),
        }
    }

    #[test]
    fn an_etcd_url_gives_the_endpoint_and_the_key_prefixes() {
        let plain = etcd("etcd://127.0.0.1:2379");
        assert_eq!(plain.endpoint(), "127.0.0.1:2379");
        assert_eq!(plain.prefix("catalog"), "/palisade/services/catalog/");
        let rooted = etcd("etcd://localhost:23791/test-7/run/");
        assert_eq!(rooted.endpoint(), "localhost:23791");
        assert_eq!(rooted.prefix("order"), "/test-7/run/services/order/");
        assert_eq!(etcd("etcd://[::1]:2379").endpoint(), "[::1]:2379");
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn the_default_root_is_palisades_layout() {
        use palisade::balance::discover::etcd::default_prefix;
        assert_eq!(
            etcd("etcd://127.0.0.1:2379").prefix("inventory"),
            default_prefix("inventory")
        );
    }

    #[test]
    fn a_bad_registry_flag_names_the_flag_the_value_and_the_problem() {
        let cases = [
            ("consul://127.0.0.1:8500", "expected `static` or etcd://"),
            ("etcd://", "expected etcd://HOST:PORT"),
            ("etcd://127.0.0.1", "expected etcd://HOST:PORT"),
            ("etcd://:2379", "expected etcd://HOST:PORT"),
            (
                "etcd://127.0.0.1:0",
                "port \"0\" is not a number from 1 to 65535",
            ),
            ("etcd://127.0.0.1:http", "port \"http\""),
            ("etcd://127.0.0.1:99999", "port \"99999\""),
            ("etcd://bad_host:2379", "host \"bad_host\""),
            ("etcd://[::1:2379", "host \"[::1\""),
            ("etcd://user:pw@127.0.0.1:2379", "credentials"),
            ("etcd://127.0.0.1:2379?x=1", "query or fragment"),
            ("etcd://127.0.0.1:2379//x", "root \"//x\""),
            ("etcd://127.0.0.1:2379/a b", "root \"/a b\""),
        ];
        for (value, problem) in cases {
            let err = value.parse::<RegistryFlag>().unwrap_err();
            assert!(
                err.starts_with(&format!("--registry {value:?}: ")),
                "{value}: {err}"
            );
            assert!(err.contains(problem), "{value}: {err}");
        }
    }
}
