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

/// When the PEM certificate at `path` (its first certificate: the leaf)
/// stops being valid, in seconds since the Unix epoch; exported as
/// `shortlink_tls_certificate_expiry_timestamp_seconds`.
pub fn not_after(path: &Path) -> anyhow::Result<i64> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not a PEM certificate: {e}", path.display()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("{} is not an X.509 certificate: {e}", path.display()))?;
    Ok(cert.validity().not_after.timestamp())
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

    #[test]
    fn not_after_reads_the_certificate_expiry() {
        let dir = std::env::temp_dir().join(format!("shortlink-tls-exp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join("c.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        assert_eq!(super::not_after(&path).unwrap(), 1_936_742_400);
        std::fs::write(&path, "not a certificate").unwrap();
        assert!(super::not_after(&path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
