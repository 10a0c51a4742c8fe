//! `portico demo --tls`: a self-signed certificate made at start (rcgen, ECDSA P-256) for
//! `localhost` and `127.0.0.1`, written to a temporary directory for the gateway to load and
//! for curl's `--cacert`, removed again when the demo ends.

use std::path::PathBuf;

/// The demo's certificate and key files.
pub struct DemoCert {
    dir: PathBuf,
    /// PEM certificate (also what clients trust with `--cacert`).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl DemoCert {
    /// Makes a new self-signed certificate and writes both files.
    pub fn generate() -> std::io::Result<Self> {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let made = rcgen::generate_simple_self_signed(names)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let dir = std::env::temp_dir().join(format!("portico-demo-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, made.cert.pem())?;
        std::fs::write(&key, made.signing_key.serialize_pem())?;
        Ok(Self { dir, cert, key })
    }

    /// The `tls:` section serving this certificate on `listen`.
    pub fn yaml(&self, listen: &str) -> String {
        format!(
            "\ntls:\n  listen: [\"{listen}\"]\n  certificates:\n    - {{cert: \"{}\", key: \"{}\"}}\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

impl Drop for DemoCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
