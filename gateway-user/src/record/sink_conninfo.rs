//! The sink's connection string: libpq keywords or a URL, split into what tokio-postgres
//! takes and what it does not (`sslmode`'s verify modes, `sslrootcert`), and the hosts to try,
//! each with the TLS mode it is held to.

use tokio_postgres::config::{Host, SslMode};

use super::*;

pub(super) struct Endpoint {
    pub(super) to: Peer,
    /// The name the server certificate must carry (the host, else the address).
    pub(super) server_name: Option<ServerName<'static>>,
    pub(super) mode: SslMode,
}

pub(super) enum Peer {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.to {
            Peer::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Peer::Tcp { host, port } => write!(f, "{host}:{port}"),
            Peer::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The connection string without the TLS settings the sink handles itself (tokio-postgres
/// knows no `sslrootcert`, and its `sslmode` has no verify modes).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Split {
    pub(super) rest: String,
    pub(super) sslmode: Option<String>,
    pub(super) sslrootcert: Option<String>,
}

pub(super) fn split_conninfo(s: &str) -> Result<Split, String> {
    let s = s.trim();
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        split_url(s)
    } else {
        split_keywords(s)
    }
}

pub(super) fn split_keywords(s: &str) -> Result<Split, String> {
    let mut out = Split::default();
    let mut rest = Vec::new();
    let mut it = s.chars().peekable();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
    };
    loop {
        skip_ws(&mut it);
        if it.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c.is_whitespace() || c == '=' {
                break;
            }
            key.push(c);
            it.next();
        }
        skip_ws(&mut it);
        if it.next() != Some('=') {
            return Err(format!("connection string: expected `=` after `{key}`"));
        }
        skip_ws(&mut it);
        let mut value = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            loop {
                match it.next() {
                    None => {
                        return Err(format!(
                            "connection string: unterminated quoted value of `{key}`"
                        ))
                    }
                    Some('\'') => break,
                    Some('\\') => value.extend(it.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                it.next();
                if c == '\\' {
                    value.extend(it.next());
                } else {
                    value.push(c);
                }
            }
        }
        match key.as_str() {
            "sslmode" => out.sslmode = Some(value),
            "sslrootcert" => out.sslrootcert = Some(value),
            _ => rest.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )),
        }
    }
    out.rest = rest.join(" ");
    Ok(out)
}

pub(super) fn split_url(s: &str) -> Result<Split, String> {
    let mut out = Split::default();
    let (base, query) = s.split_once('?').unwrap_or((s, ""));
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(k)?.as_str() {
            "sslmode" => out.sslmode = Some(percent_decode(v)?),
            "sslrootcert" => out.sslrootcert = Some(percent_decode(v)?),
            _ => kept.push(pair),
        }
    }
    out.rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(out)
}

pub(super) fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("connection string: bad percent-encoding in `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("connection string: `{s}` is not UTF-8"))
}

/// The hosts to try, in order, each with its TLS mode: plain (or TLS if offered) on loopback
/// and Unix sockets only, TLS required everywhere else.
pub(super) fn endpoints(
    config: &tokio_postgres::Config,
    sslmode: &str,
) -> Result<Vec<Endpoint>, String> {
    let (hosts, addrs, ports) = (
        config.get_hosts(),
        config.get_hostaddrs(),
        config.get_ports(),
    );
    if hosts.is_empty() && addrs.is_empty() {
        return Err("connection string: no `host=`".into());
    }
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err("connection string: as many `hostaddr` as `host` are needed".into());
    }
    let n = hosts.len().max(addrs.len());
    if ports.len() > 1 && ports.len() != n {
        return Err("connection string: as many `port` as `host` are needed".into());
    }
    let mut out = Vec::new();
    for i in 0..n {
        let port = ports
            .get(i)
            .or_else(|| ports.first())
            .copied()
            .unwrap_or(5432);
        let host = hosts.get(i);
        let addr = addrs.get(i);
        let (to, local, name) = match (host, addr) {
            (Some(Host::Unix(dir)), _) => {
                (Peer::Unix(dir.join(format!(".s.PGSQL.{port}"))), true, None)
            }
            (host, Some(ip)) => {
                let name = match host {
                    Some(Host::Tcp(h)) => h.clone(),
                    _ => ip.to_string(),
                };
                (
                    Peer::Tcp {
                        host: ip.to_string(),
                        port,
                    },
                    ip.is_loopback(),
                    Some(name),
                )
            }
            (Some(Host::Tcp(h)), None) => {
                let local = h.eq_ignore_ascii_case("localhost")
                    || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                (
                    Peer::Tcp {
                        host: h.clone(),
                        port,
                    },
                    local,
                    Some(h.clone()),
                )
            }
            (None, None) => unreachable!("n is the longer list"),
        };
        let mode = match (sslmode, local) {
            (_, true) if matches!(to, Peer::Unix(_)) => SslMode::Disable,
            ("disable", true) => SslMode::Disable,
            ("allow" | "prefer", true) => SslMode::Prefer,
            ("disable" | "allow", false) => {
                let ep = Endpoint {
                    to,
                    server_name: None,
                    mode: SslMode::Disable,
                };
                return Err(format!(
                    "sslmode={sslmode}: plain connections to the central audit store are allowed \
                     to loopback addresses and Unix sockets only, and {ep} is neither; use \
                     sslmode=verify-full (TLS; give sslrootcert=FILE for a private CA)"
                ));
            }
            _ => SslMode::Require,
        };
        let server_name = match name {
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|e| format!("connection string: host `{n}`: {e}"))?,
            ),
            None => None,
        };
        out.push(Endpoint {
            to,
            server_name,
            mode,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// TLS (rustls) for tokio-postgres
// ---------------------------------------------------------------------------------------------
