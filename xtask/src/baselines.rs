//! The proxies agentgate is measured against, from the Debian packages `cargo xtask setup`
//! installs: HAProxy in TCP mode (a pure L4 relay: what any proxy in the path costs) and
//! PgBouncer in session mode (a PostgreSQL-aware proxy that parses the protocol and
//! authenticates clients itself, as agentgate does). Each runs in the foreground in its own
//! directory under /tmp and is killed, and the directory removed, on drop.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// A proxy process listening on 127.0.0.1:`port` in front of the PostgreSQL on `pg_port`.
pub struct Baseline {
    child: Child,
    dir: PathBuf,
}

impl Baseline {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// HAProxy 2.x, `mode tcp`, two threads (one per core here), no health checks.
    pub fn haproxy(port: u16, pg_port: u16) -> anyhow::Result<Self> {
        Self::haproxy_to(port, SocketAddr::from(([127, 0, 0, 1], pg_port)), false)
    }

    /// HAProxy in `mode tcp` in front of `upstream`; with `splice`, `option splice-auto`
    /// (the kernel moves the bytes between the sockets through a pipe, never through HAProxy's
    /// buffers; off by default).
    pub fn haproxy_to(port: u16, upstream: SocketAddr, splice: bool) -> anyhow::Result<Self> {
        let dir = fresh_dir(if splice { "haproxy-splice" } else { "haproxy" })?;
        let cfg = dir.join("haproxy.cfg");
        fs::write(
            &cfg,
            format!(
                "global\n  nbthread 2\n  maxconn 2000\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n{}\
                 listen relay\n  bind 127.0.0.1:{port}\n  server up {upstream}\n",
                if splice { "  option splice-auto\n" } else { "" }
            ),
        )?;
        let log = fs::File::create(dir.join("haproxy.log"))?;
        // -db: foreground, no daemon; -f: the configuration.
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start haproxy (installed by `cargo xtask setup`)")?;
        Self::ready(child, dir, port, "haproxy")
    }

    /// PgBouncer 1.x, `pool_mode = session`, as the OS user `postgres` (it refuses to run as
    /// root). Clients authenticate to it with SCRAM as `user` (`password` in its auth file), and
    /// it logs in upstream as the same role with SCRAM, as a driver would directly.
    pub fn pgbouncer(
        port: u16,
        pg_port: u16,
        db: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        let dir = fresh_dir("pgbouncer")?;
        let cfg = dir.join("pgbouncer.ini");
        fs::write(
            dir.join("userlist.txt"),
            format!("\"{user}\" \"{password}\"\n"),
        )?;
        fs::write(
            &cfg,
            format!(
                "[databases]\n{db} = host=127.0.0.1 port={pg_port} dbname={db}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {dir}/userlist.txt\n\
                 pool_mode = session\nmax_client_conn = 500\ndefault_pool_size = 64\n\
                 logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n\
                 log_connections = 0\nlog_disconnections = 0\n\
                 ignore_startup_parameters = extra_float_digits\n",
                dir = dir.display()
            ),
        )?;
        crate::util::run(Command::new("chown").arg("-R").arg("postgres:").arg(&dir))?;
        let log = fs::File::create(dir.join("stderr.log"))?;
        crate::util::run(
            Command::new("chown")
                .arg("postgres:")
                .arg(dir.join("stderr.log")),
        )?;
        let child = Command::new("pgbouncer")
            .args(["-u", "postgres", "-q"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start pgbouncer (installed by `cargo xtask setup`)")?;
        Self::ready(child, dir, port, "pgbouncer")
    }

    /// Waits until `port` accepts connections; on failure the process's log is the error.
    fn ready(mut child: Child, dir: PathBuf, port: u16, what: &str) -> anyhow::Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(Self { child, dir });
            }
            let exited = child.try_wait()?;
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let logs: String = fs::read_dir(&dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
                    .collect();
                let _ = fs::remove_dir_all(&dir);
                bail!(
                    "{what} did not listen on {addr} ({}):\n{logs}",
                    exited.map_or("still starting after 10 s".into(), |s| s.to_string())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn fresh_dir(what: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("agbench-{what}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}
