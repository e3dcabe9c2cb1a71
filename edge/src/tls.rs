//! TLS material: the configured certificate and key, or a self-signed pair
//! generated at first start and kept in the certificate directory, so the
//! edge serves HTTPS (and HTTP/2) with no set-up.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Returns (certificate path, key path), generating a self-signed
/// certificate for localhost when none is configured.
pub fn material(
    cert: Option<&Path>,
    key: Option<&Path>,
    dir: &Path,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    if let (Some(c), Some(k)) = (cert, key) {
        anyhow::ensure!(c.exists(), "TLS_CERT {} does not exist", c.display());
        anyhow::ensure!(k.exists(), "TLS_KEY {} does not exist", k.display());
        return Ok((c.to_owned(), k.to_owned()));
    }
    let (c, k) = (
        dir.join("edge-selfsigned.crt"),
        dir.join("edge-selfsigned.key"),
    );
    if c.exists() && k.exists() {
        return Ok((c, k));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let cert = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed certificate")?;
    std::fs::write(&c, cert.cert.pem())?;
    write_private(&k, cert.signing_key.serialize_pem().as_bytes())?;
    tracing::warn!(cert = %c.display(), "no TLS_CERT configured: generated a self-signed certificate");
    Ok((c, k))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(data)
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, data)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn generates_once_and_reuses() {
        let dir = std::env::temp_dir().join(format!("shortlink-tls-{}", std::process::id()));
        let (c1, k1) = super::material(None, None, &dir).unwrap();
        let pem1 = std::fs::read_to_string(&c1).unwrap();
        assert!(pem1.contains("BEGIN CERTIFICATE"));
        assert!(
            std::fs::read_to_string(&k1)
                .unwrap()
                .contains("PRIVATE KEY")
        );
        let (c2, _) = super::material(None, None, &dir).unwrap();
        assert_eq!(pem1, std::fs::read_to_string(c2).unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }
}
