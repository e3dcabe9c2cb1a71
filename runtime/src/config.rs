//! Helpers for configuration errors: bad configuration exits with a clear
//! message and exit code 64 (`EX_USAGE`), never a panic or a stack trace.

/// Exit code for bad configuration (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// A configuration problem detected after argument parsing.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// Builds an error from anything printable.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// The default name of an instance that was given none (`INSTANCE_ID`,
/// `EDGE_ID`): `<component>-<port>` when it listens on a specific address,
/// so several on one host differ by port; `<component>-<hostname>-<port>`
/// when it listens on every interface (`0.0.0.0`, `[::]`), as it does in a
/// container, where every replica of `docker compose up --scale` has the
/// same port and its own hostname (the container id).
pub fn default_instance_id(component: &str, listen: std::net::SocketAddr) -> String {
    let host = listen
        .ip()
        .is_unspecified()
        .then(hostname)
        .flatten()
        .filter(|h| !h.is_empty());
    match host {
        Some(h) => format!("{component}-{h}-{}", listen.port()),
        None => format!("{component}-{}", listen.port()),
    }
}

fn hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_named_by_port_on_an_address_and_by_host_on_every_interface() {
        assert_eq!(
            default_instance_id("links", "127.0.0.1:50061".parse().unwrap()),
            "links-50061"
        );
        let host = hostname().expect("this machine has a hostname");
        for any in ["0.0.0.0:50061", "[::]:50061"] {
            assert_eq!(
                default_instance_id("links", any.parse().unwrap()),
                format!("links-{host}-50061")
            );
        }
    }
}
