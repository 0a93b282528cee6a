//! Connection files: where a kernel's five sockets are and the signing key.
//!
//! Both transports are supported. With `tcp`, endpoints are `tcp://{ip}:{port}`;
//! with `ipc`, they are `ipc://{ip}-{port}`, where `ip` is a path prefix. ipc
//! sockets are files, so they cross network namespaces through a bind mount.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// The transport named in a connection file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Ipc,
}

/// Errors reading or writing a connection file.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("reading connection file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing connection file {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection file {path} is not valid: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("signature scheme {0:?} is not supported; only hmac-sha256 is")]
    Scheme(String),
}

/// The contents of a Jupyter connection file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub transport: Transport,
    pub ip: String,
    pub shell_port: u16,
    pub iopub_port: u16,
    pub stdin_port: u16,
    pub control_port: u16,
    pub hb_port: u16,
    /// The signing key, used as raw ASCII bytes.
    pub key: String,
    pub signature_scheme: String,
    #[serde(default)]
    pub kernel_name: String,
}

impl fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("transport", &self.transport)
            .field("ip", &self.ip)
            .field("shell_port", &self.shell_port)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ConnectionInfo {
    /// An ipc connection with sockets at `{prefix}-1` … `{prefix}-5` and a
    /// fresh random key.
    pub fn new_ipc(prefix: &Path) -> Self {
        Self {
            transport: Transport::Ipc,
            ip: prefix.to_string_lossy().into_owned(),
            shell_port: 1,
            iopub_port: 2,
            stdin_port: 3,
            control_port: 4,
            hb_port: 5,
            key: random_key(),
            signature_scheme: "hmac-sha256".to_owned(),
            kernel_name: String::new(),
        }
    }

    /// The ZeroMQ endpoint for a port of this connection.
    pub fn endpoint(&self, port: u16) -> String {
        match self.transport {
            Transport::Tcp => format!("tcp://{}:{}", self.ip, port),
            Transport::Ipc => format!("ipc://{}-{}", self.ip, port),
        }
    }

    /// For ipc, the socket file behind a port.
    pub fn ipc_path(&self, port: u16) -> Option<String> {
        (self.transport == Transport::Ipc).then(|| format!("{}-{}", self.ip, port))
    }

    /// Reads and checks a connection file.
    pub fn read(path: &Path) -> Result<Self, ConnectionError> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ConnectionError::Read {
            path: p.clone(),
            source,
        })?;
        let info: Self = serde_json::from_slice(&bytes)
            .map_err(|source| ConnectionError::Parse { path: p, source })?;
        if info.signature_scheme != "hmac-sha256" {
            return Err(ConnectionError::Scheme(info.signature_scheme));
        }
        Ok(info)
    }

    /// Writes a new connection file, readable by its owner only. Refuses to
    /// overwrite or follow anything already at `path` (a symlink planted
    /// there must not redirect the write).
    pub fn write(&self, path: &Path) -> Result<(), ConnectionError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = path.display().to_string();
        let json = serde_json::to_vec_pretty(self).map_err(|source| ConnectionError::Parse {
            path: p.clone(),
            source,
        })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| ConnectionError::Write {
                path: p.clone(),
                source,
            })?;
        f.write_all(&json)
            .map_err(|source| ConnectionError::Write { path: p, source })
    }
}

/// 128 random bits as hex, from the OS RNG via uuid v4.
fn random_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let mut c = ConnectionInfo::new_ipc(Path::new("/run/x/k"));
        assert_eq!(c.endpoint(c.shell_port), "ipc:///run/x/k-1");
        assert_eq!(c.ipc_path(2).as_deref(), Some("/run/x/k-2"));
        c.transport = Transport::Tcp;
        c.ip = "127.0.0.1".into();
        assert_eq!(c.endpoint(5555), "tcp://127.0.0.1:5555");
        assert!(c.ipc_path(1).is_none());
        assert!(!format!("{c:?}").contains(&c.key));
    }

    #[test]
    fn file_roundtrip() {
        let dir = std::env::temp_dir().join(format!("cb-conn-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.json");
        let c = ConnectionInfo::new_ipc(&dir.join("k"));
        c.write(&path).unwrap();
        assert_eq!(ConnectionInfo::read(&path).unwrap(), c);
        std::fs::write(&path, b"{").unwrap();
        assert!(matches!(
            ConnectionInfo::read(&path),
            Err(ConnectionError::Parse { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
