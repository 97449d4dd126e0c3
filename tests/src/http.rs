//! HTTP(S) pieces for the tests: certificate authorities made with the real `openssl`, a real
//! HTTPS service (Python's standard library, tests/fixtures/http/upstream.py) that logs what it
//! receives, and `curl` as the agent.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use serde_json::Value;

use crate::{fixtures, unique};

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority (EC P-256, PKCS#8 key) in `dir`, and leaves it signs.
pub struct Ca {
    pub cert: PathBuf,
    pub key: PathBuf,
    dir: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).expect("ca dir");
        let cert = dir.join(format!("{name}-ca.crt"));
        let key = dir.join(format!("{name}-ca.key"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            key.to_str().unwrap_or_default(),
        ]);
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            key.to_str().unwrap_or_default(),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            cert.to_str().unwrap_or_default(),
        ]);
        Ca {
            cert,
            key,
            dir: dir.to_path_buf(),
        }
    }

    /// A server leaf for `dns` names and `ips`: (cert, key).
    pub fn leaf(&self, name: &str, dns: &[&str], ips: &[&str]) -> (PathBuf, PathBuf) {
        let key = self.dir.join(format!("{name}.key"));
        let csr = self.dir.join(format!("{name}.csr"));
        let cert = self.dir.join(format!("{name}.crt"));
        let ext = self.dir.join(format!("{name}.ext"));
        let mut sans: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
        sans.extend(ips.iter().map(|i| format!("IP:{i}")));
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nextendedKeyUsage=serverAuth,clientAuth\n",
                sans.join(",")
            ),
        )
        .expect("ext file");
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            key.to_str().unwrap_or_default(),
        ]);
        openssl(&[
            "req",
            "-new",
            "-key",
            key.to_str().unwrap_or_default(),
            "-subj",
            &format!("/CN={name}"),
            "-out",
            csr.to_str().unwrap_or_default(),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap_or_default(),
            "-CA",
            self.cert.to_str().unwrap_or_default(),
            "-CAkey",
            self.key.to_str().unwrap_or_default(),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            ext.to_str().unwrap_or_default(),
            "-out",
            cert.to_str().unwrap_or_default(),
        ]);
        (cert, key)
    }
}

/// The logging HTTPS service; killed on drop.
pub struct Upstream {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Upstream {
    /// Serves on `addr`, TLS with `tls` (cert, key) or plain.
    pub fn start(addr: SocketAddr, tls: Option<(&Path, &Path)>) -> Self {
        let log =
            std::env::temp_dir().join(format!("{}-{}.jsonl", unique("http-upstream"), addr.port()));
        let mut cmd = Command::new("python3");
        cmd.arg(fixtures().join("http/upstream.py"))
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(&log);
        if let Some((c, k)) = tls {
            cmd.arg(c).arg(k);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start upstream.py");
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        assert_eq!(line.trim(), "ready", "upstream.py did not start");
        Upstream { child, addr, log }
    }

    /// Every request the service received, in order.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// A header of a logged request (names are lower case), every value.
pub fn header_values(request: &Value, name: &str) -> Vec<String> {
    request["headers"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter(|h| h[0].as_str() == Some(name))
                .filter_map(|h| h[1].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
