//! A real, throwaway PostgreSQL 15 server for the end-to-end tests, and the clients that talk to
//! it (psql, pgbench, `fixtures/pg_client.py` on psycopg 3).
//!
//! The server runs as the `postgres` OS user (initdb refuses root) from a fresh directory
//! `/tmp/agtest-pg-<name>-<pid>`, listens on loopback only (127.0.0.1 and ::1) and is stopped and
//! removed on drop, also when the test fails. A server left behind by a killed test run (its
//! directory names a process that is gone) is stopped and removed by the next `start` of the same
//! name.
//!
//! Roles (all with password [`ROLE_PASSWORD`], reachable over TCP on loopback only):
//!
//! | role              | pg_hba method                      | stored password |
//! | ----------------- | ---------------------------------- | --------------- |
//! | `agentgate_scram` | `scram-sha-256`                    | SCRAM           |
//! | `agentgate_md5`   | `md5`                              | md5             |
//! | `agentgate_plain` | `password` (cleartext)             | SCRAM           |
//! | `agentgate_tls`   | `scram-sha-256`, `hostssl` only    | SCRAM (TLS servers only) |
//! | `postgres`        | `scram-sha-256` ([`SUPERUSER_PASSWORD`]); `peer` on the socket | SCRAM |
//!
//! Everyone and everything else is rejected.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Password of the superuser `postgres` over TCP.
pub const SUPERUSER_PASSWORD: &str = "superuser-secret-5f1c9a";
/// Password of every `agentgate_*` role.
pub const ROLE_PASSWORD: &str = "upstream-secret-7d3e2b";

/// The roles every server has, with their pg_hba method (`agentgate_tls` only with TLS).
pub const ROLE_SCRAM: &str = "agentgate_scram";
pub const ROLE_MD5: &str = "agentgate_md5";
pub const ROLE_PLAIN: &str = "agentgate_plain";
pub const ROLE_TLS: &str = "agentgate_tls";

const OS_USER: &str = "postgres";
const START_TIMEOUT_SECS: u64 = 30;

#[derive(Debug, Clone, Copy, Default)]
pub struct PgOptions {
    /// `ssl=on` with a throwaway CA and server certificate, and the `agentgate_tls` role.
    pub tls: bool,
}

/// A running PostgreSQL server; stopped (`-m immediate`) and its directory removed on drop.
pub struct PgServer {
    pub port: u16,
    /// `/tmp/agtest-pg-<name>-<pid>`: data directory `data/`, log, socket, TLS files.
    pub dir: PathBuf,
    pub tls: bool,
    bindir: PathBuf,
    uid: u32,
    gid: u32,
}

/// Where the PostgreSQL 15 server binaries are: `$AGENTGATE_PG_BINDIR`, Debian's directory,
/// or `/usr/local/bin`.
pub fn pg_bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("AGENTGATE_PG_BINDIR") {
        return PathBuf::from(d);
    }
    ["/usr/lib/postgresql/15/bin", "/usr/local/bin"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL 15 server binaries (initdb, pg_ctl) not found in \
                 /usr/lib/postgresql/15/bin or /usr/local/bin: run `cargo xtask setup` \
                 (or set AGENTGATE_PG_BINDIR)"
            )
        })
}

/// A client binary (`psql`, `pgbench`): the one beside the server binaries if present (Debian's
/// `/usr/bin` ones are a Perl wrapper that picks a version), else from PATH.
fn client_bin(name: &str) -> PathBuf {
    let beside = std::env::var_os("AGENTGATE_PG_BINDIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/usr/lib/postgresql/15/bin")])
        .map(|d| d.join(name))
        .find(|p| p.exists());
    beside.unwrap_or_else(|| PathBuf::from(name))
}

/// uid and gid of an OS user.
fn os_user(name: &str) -> (u32, u32) {
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: getpwnam returns NULL or a pointer to a static passwd entry we read right away.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    assert!(
        !pw.is_null(),
        "OS user {name:?} does not exist (the postgresql-15 package creates it: \
         `cargo xtask setup`)"
    );
    // SAFETY: non-null, valid until the next getpw* call.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Runs `cmd`, panicking with its output if it fails.
fn run_checked(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Drops every `PG*` variable inherited from the environment, so only what the caller sets
/// (conninfo, PGPASSWORD, ...) reaches libpq.
pub fn clean_pg_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
}

/// A libpq conninfo value, quoted.
fn conn_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// An SQL identifier, double-quoted.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// An SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

impl PgServer {
    /// initdb into a fresh `/tmp/agtest-pg-<name>-<pid>`, configure loopback-only access for the
    /// roles in the module docs, start with `pg_ctl -w`. Panics with the server log if it is not
    /// up within 30 s. `name` must be unique among the servers running at once in this process.
    pub fn start(name: &str, port: u16, opts: PgOptions) -> PgServer {
        crate::require_root();
        let bindir = pg_bindir();
        let (uid, gid) = os_user(OS_USER);
        remove_stale(name);
        let dir = PathBuf::from(format!("/tmp/agtest-pg-{name}-{}", std::process::id()));
        if dir.exists() {
            stop_dir(&bindir, &dir);
            let _ = fs::remove_dir_all(&dir);
        }
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        // From here on the guard cleans up, whatever fails.
        let server = PgServer {
            port,
            dir,
            tls: opts.tls,
            bindir,
            uid,
            gid,
        };
        chmod(&server.dir, 0o755);
        chown(&server.dir, uid, gid);
        server.initdb();
        server.configure();
        if opts.tls {
            server.make_certs();
        }
        server.pg_ctl_start();
        server.bootstrap();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The server log so far (connection attempts are logged; `log_connections=on`).
    pub fn log_contents(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The CA certificate (PEM, world-readable) that signed the server certificate.
    /// Panics if the server was started without TLS.
    pub fn ca_file(&self) -> PathBuf {
        assert!(self.tls, "ca_file(): this PgServer was started without TLS");
        self.dir.join("tls/ca.pem")
    }

    /// The CA's private key (PEM), for tests that sign more certificates.
    pub fn ca_key_file(&self) -> PathBuf {
        assert!(
            self.tls,
            "ca_key_file(): this PgServer was started without TLS"
        );
        self.dir.join("tls/ca.key")
    }

    /// The directory of the Unix socket (the superuser's `peer` access).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A command run as the `postgres` OS user, in the server directory.
    fn as_postgres(&self, program: &Path) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", OS_USER, "--"])
            .arg(program)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        clean_pg_env(&mut cmd);
        cmd
    }

    fn initdb(&self) {
        let pwfile = self.dir.join("superuser.pw");
        fs::write(&pwfile, SUPERUSER_PASSWORD).expect("write password file");
        chown(&pwfile, self.uid, self.gid);
        chmod(&pwfile, 0o600);
        run_checked(
            self.as_postgres(&self.bindir.join("initdb"))
                .arg("-D")
                .arg(self.data())
                .args([
                    "-U",
                    "postgres",
                    "--pwfile",
                    "superuser.pw",
                    "--auth-local=peer",
                    "--auth-host=reject",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ]),
        );
        let _ = fs::remove_file(&pwfile);
    }

    fn configure(&self) {
        let mut conf = format!(
            "\n# agentgate test server\n\
             listen_addresses = '127.0.0.1,::1'\n\
             port = {port}\n\
             unix_socket_directories = {sock}\n\
             password_encryption = 'scram-sha-256'\n\
             max_connections = 200\n\
             shared_buffers = '32MB'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             log_connections = on\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n\
             log_timezone = 'UTC'\n\
             timezone = 'UTC'\n",
            port = self.port,
            sock = literal(&self.dir.to_string_lossy()),
        );
        let mut hba = String::from(
            "# agentgate test server: loopback only, one auth method per role, the rest rejected.\n\
             # TYPE  DATABASE USER            ADDRESS       METHOD\n\
             local   all      postgres                      peer\n",
        );
        for addr in ["127.0.0.1/32", "::1/128"] {
            hba += &format!("host    all      postgres        {addr:<13} scram-sha-256\n");
            hba += &format!("host    all      {ROLE_SCRAM} {addr:<13} scram-sha-256\n");
            hba += &format!("host    all      {ROLE_MD5}   {addr:<13} md5\n");
            hba += &format!("host    all      {ROLE_PLAIN} {addr:<13} password\n");
            if self.tls {
                hba += &format!("hostssl all      {ROLE_TLS}   {addr:<13} scram-sha-256\n");
            }
        }
        for addr in ["127.0.0.1/32", "::1/128"] {
            hba += &format!("host    all      all             {addr:<13} reject\n");
        }
        hba += "local   all      all                           reject\n";
        if self.tls {
            let tls = self.dir.join("tls");
            conf += &format!(
                "ssl = on\nssl_cert_file = {}\nssl_key_file = {}\n",
                literal(&tls.join("server.crt").to_string_lossy()),
                literal(&tls.join("server.key").to_string_lossy()),
            );
        }
        let data = self.data();
        let mut pg_conf =
            fs::read_to_string(data.join("postgresql.conf")).expect("postgresql.conf");
        pg_conf += &conf;
        fs::write(data.join("postgresql.conf"), pg_conf).expect("write postgresql.conf");
        fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    /// A throwaway CA ("agentgate test CA") and a server certificate it signs for 127.0.0.1,
    /// ::1 and localhost (ECDSA P-256).
    fn make_certs(&self) {
        let tls = self.dir.join("tls");
        fs::create_dir_all(&tls).expect("mkdir tls");
        chmod(&tls, 0o755);
        fs::write(
            tls.join("openssl.cnf"),
            "[req]\n\
             distinguished_name = dn\n\
             prompt = no\n\
             [dn]\n\
             CN = agentgate test CA\n\
             [v3_ca]\n\
             basicConstraints = critical, CA:TRUE\n\
             keyUsage = critical, keyCertSign, cRLSign\n\
             subjectKeyIdentifier = hash\n\
             [v3_server]\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\n\
             subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost\n\
             subjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid\n",
        )
        .expect("write openssl.cnf");
        let openssl = |args: &[&str]| {
            run_checked(
                Command::new("openssl")
                    .args(args)
                    .current_dir(&tls)
                    .stdin(Stdio::null()),
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(
            &[
                &[
                    "req",
                    "-x509",
                    "-config",
                    "openssl.cnf",
                    "-extensions",
                    "v3_ca",
                ][..],
                &ec,
                &[
                    "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "7",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &[
                    "req",
                    "-new",
                    "-config",
                    "openssl.cnf",
                    "-subj",
                    "/CN=localhost",
                ][..],
                &ec,
                &["-nodes", "-keyout", "server.key", "-out", "server.csr"],
            ]
            .concat(),
        );
        let serial = format!("{}", crate::now() * 1000 + u64::from(self.port));
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "7",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            "v3_server",
            "-out",
            "server.crt",
        ]);
        chmod(&tls.join("ca.pem"), 0o644);
        chmod(&tls.join("server.crt"), 0o644);
        chmod(&tls.join("ca.key"), 0o600);
        // PostgreSQL refuses a key other users can read, or one it does not own.
        let key = tls.join("server.key");
        chown(&key, self.uid, self.gid);
        chmod(&key, 0o600);
        chown(&tls.join("server.crt"), self.uid, self.gid);
    }

    fn pg_ctl_start(&self) {
        let log = self.log_path();
        let ctl_log = fs::File::create(self.dir.join("pg_ctl.out")).expect("pg_ctl.out");
        chown(&self.dir.join("pg_ctl.out"), self.uid, self.gid);
        // pg_ctl writes to its own file, not to a pipe: the postmaster it forks must not hold
        // our pipe open.
        let status = self
            .as_postgres(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", &START_TIMEOUT_SECS.to_string(), "start"])
            .stdout(ctl_log.try_clone().expect("dup"))
            .stderr(ctl_log)
            .status()
            .expect("run pg_ctl start");
        if !status.success() {
            panic!(
                "PostgreSQL on port {} did not come up within {START_TIMEOUT_SECS} s ({status})\n\
                 --- pg_ctl ---\n{}\n--- server log ({}) ---\n{}",
                self.port,
                fs::read_to_string(self.dir.join("pg_ctl.out")).unwrap_or_default(),
                log.display(),
                self.log_contents()
            );
        }
        // `pg_ctl -w` waits for the postmaster; make sure TCP answers too.
        let deadline = Instant::now() + Duration::from_secs(START_TIMEOUT_SECS);
        loop {
            let out = self.superuser_psql("postgres", "SELECT 1");
            if out.status.success() {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "PostgreSQL on port {} does not answer on 127.0.0.1: {}\n--- server log ---\n{}",
                    self.port,
                    String::from_utf8_lossy(&out.stderr),
                    self.log_contents()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn bootstrap(&self) {
        let pw = literal(ROLE_PASSWORD);
        let mut sql = format!(
            "CREATE ROLE {ROLE_SCRAM} LOGIN PASSWORD {pw};\n\
             CREATE ROLE {ROLE_PLAIN} LOGIN PASSWORD {pw};\n\
             SET password_encryption = 'md5';\n\
             CREATE ROLE {ROLE_MD5} LOGIN PASSWORD {pw};\n\
             RESET password_encryption;\n"
        );
        if self.tls {
            sql += &format!("CREATE ROLE {ROLE_TLS} LOGIN PASSWORD {pw};\n");
        }
        self.sql(&sql);
    }

    /// The `agentgate_*` roles this server has.
    pub fn roles(&self) -> Vec<&'static str> {
        let mut r = vec![ROLE_SCRAM, ROLE_MD5, ROLE_PLAIN];
        if self.tls {
            r.push(ROLE_TLS);
        }
        r
    }

    /// psql as the superuser over TCP, `sql` as its script on stdin: statements run one by one
    /// (each in its own transaction unless the script says BEGIN), in one session.
    fn superuser_psql(&self, db: &str, sql: &str) -> Output {
        use std::io::Write;
        let mut cmd = psql_command(&self.conninfo("postgres", SUPERUSER_PASSWORD, db, "disable"));
        cmd.args(["-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run psql");
        let mut stdin = child.stdin.take().expect("psql stdin");
        // A psql that exits early closes the pipe; its output says why.
        let _ = stdin.write_all(sql.as_bytes());
        let _ = stdin.write_all(b"\n");
        drop(stdin);
        child.wait_with_output().expect("wait for psql")
    }

    /// Runs `sql` (one or more `;`-terminated statements, one session, each statement its own
    /// transaction unless the script has BEGIN) as the superuser over TCP 127.0.0.1 in database
    /// `postgres`; returns psql's trimmed, unaligned, tuples-only stdout. Panics with psql's
    /// stderr if a statement fails.
    pub fn sql(&self, sql: &str) -> String {
        self.sql_in("postgres", sql)
    }

    /// Like [`sql`](Self::sql), in database `db`.
    pub fn sql_in(&self, db: &str, sql: &str) -> String {
        let out = self.superuser_psql(db, sql);
        assert!(
            out.status.success(),
            "SQL as superuser in {db} failed: {}\nSQL: {sql}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates database `db` (owned by `postgres`) that every `agentgate_*` role may use fully:
    /// see [`create_db_owned`](Self::create_db_owned).
    pub fn create_db(&self, db: &str) {
        self.create_db_owned(db, "postgres");
    }

    /// Creates database `db` owned by `owner`. Every `agentgate_*` role gets CONNECT and TEMP
    /// on it, all privileges on its schema `public` and on all tables, sequences and functions
    /// in it, also on those any of these roles (or the superuser) create later.
    pub fn create_db_owned(&self, db: &str, owner: &str) {
        self.sql(&format!(
            "CREATE DATABASE {} OWNER {};",
            ident(db),
            ident(owner)
        ));
        let roles: Vec<String> = self.roles().iter().map(|r| ident(r)).collect();
        let roles = roles.join(", ");
        let creators = format!("{roles}, {}", ident("postgres"));
        self.sql(&format!(
            "GRANT CONNECT, TEMPORARY ON DATABASE {} TO {roles};",
            ident(db)
        ));
        self.sql_in(
            db,
            &format!(
                "GRANT ALL ON SCHEMA public TO {roles};\n\
                 GRANT ALL ON ALL TABLES IN SCHEMA public TO {roles};\n\
                 GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {roles};\n\
                 GRANT ALL ON ALL FUNCTIONS IN SCHEMA public TO {roles};\n\
                 ALTER DEFAULT PRIVILEGES FOR ROLE {creators} IN SCHEMA public GRANT ALL ON TABLES TO {roles};\n\
                 ALTER DEFAULT PRIVILEGES FOR ROLE {creators} IN SCHEMA public GRANT ALL ON SEQUENCES TO {roles};\n\
                 ALTER DEFAULT PRIVILEGES FOR ROLE {creators} IN SCHEMA public GRANT ALL ON FUNCTIONS TO {roles};\n"
            ),
        );
    }

    /// A libpq conninfo for a direct connection to this server on 127.0.0.1. With
    /// `sslmode` `verify-ca` / `verify-full` on a TLS server, `sslrootcert` is the test CA. An
    /// empty `sslmode` leaves libpq's default (`prefer`).
    pub fn conninfo(&self, user: &str, password: &str, db: &str, sslmode: &str) -> String {
        let mut s = conninfo("127.0.0.1", self.port, user, password, db, sslmode);
        if self.tls && sslmode.starts_with("verify-") {
            s += &format!(
                " sslrootcert={}",
                conn_value(&self.ca_file().to_string_lossy())
            );
        }
        s
    }

    /// `pg_ctl stop -m immediate`, and SIGKILL if that did not do it.
    pub fn stop(&self) {
        stop_dir(&self.bindir, &self.dir);
    }

    /// Starts the server again after [`stop`](Self::stop): same directory, port, roles and
    /// data (crash recovery after `-m immediate`). Panics like [`start`](Self::start) if it
    /// does not come up.
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_contents();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- postgres log ({}), last lines ---\n{}",
                self.log_path().display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        stop_dir(&self.bindir, &self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Stops the server whose data directory is `<dir>/data`, if one runs, and then kills whatever
/// still works in `dir` (an initdb cut short, say). Never panics.
fn stop_dir(bindir: &Path, dir: &Path) {
    stop_postmaster(bindir, dir);
    kill_working_in(dir);
}

fn stop_postmaster(bindir: &Path, dir: &Path) {
    let data = dir.join("data");
    let pidfile = data.join("postmaster.pid");
    let Ok(text) = fs::read_to_string(&pidfile) else {
        return;
    };
    let pid: i32 = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    if !pid_alive(pid) {
        return;
    }
    let _ = Command::new("runuser")
        .args(["-u", OS_USER, "--"])
        .arg(bindir.join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .args(["-m", "immediate", "-w", "-t", "10", "stop"])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if pid_alive(pid) {
        // SAFETY: plain kill(2) of the postmaster we started; its children exit with it.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// SIGKILLs every process whose working directory is `dir` or below it: the commands this harness
/// runs start there, and the postmaster and its children work in `dir/data`.
fn kill_working_in(dir: &Path) {
    for _ in 0..50 {
        let mut found = false;
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            let in_dir = fs::read_link(e.path().join("cwd"))
                .map(|cwd| cwd.starts_with(dir))
                .unwrap_or(false);
            if in_dir && pid as u32 != std::process::id() {
                found = true;
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops and removes `/tmp/agtest-pg-<name>-<pid>` of test processes that are gone (killed
/// before their guards ran), so their servers do not hold the ports.
fn remove_stale(name: &str) {
    let prefix = format!("agtest-pg-{name}-");
    let Ok(entries) = fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let fname = e.file_name().to_string_lossy().to_string();
        let Some(pid) = fname
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 != std::process::id() && !pid_alive(pid) {
            let bindir = pg_bindir();
            stop_dir(&bindir, &e.path());
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A libpq conninfo for `host`:`port` (loopback only in these tests). An empty `sslmode` or
/// `password` is left out; `connect_timeout=10`. No `sslrootcert`: append
/// ` sslrootcert=<path>` for the verify modes (or use [`PgServer::conninfo`]).
pub fn conninfo(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    sslmode: &str,
) -> String {
    let mut s = format!(
        "host={} port={port} dbname={} user={} connect_timeout=10",
        conn_value(host),
        conn_value(db),
        conn_value(user)
    );
    if !password.is_empty() {
        s += &format!(" password={}", conn_value(password));
    }
    if !sslmode.is_empty() {
        s += &format!(" sslmode={}", conn_value(sslmode));
    }
    s
}

/// `psql -X --dbname=<conninfo>` with `PGCONNECT_TIMEOUT=10` and no inherited `PG*` variables;
/// add arguments, a uid or a cgroup (`crate::place_as`) as needed.
pub fn psql_command(conninfo: &str) -> Command {
    let mut cmd = Command::new(client_bin("psql"));
    clean_pg_env(&mut cmd);
    cmd.arg("-X")
        .arg(format!("--dbname={conninfo}"))
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    cmd
}

/// Runs psql (see [`psql_command`]) with `args` (e.g. `["-c", "SELECT 1"]`), returning its output.
pub fn psql(conninfo: &str, args: &[&str]) -> Output {
    psql_command(conninfo)
        .args(args)
        .output()
        .expect("run psql")
}

/// `pgbench -h <host> -p <port> -U <user>` with `PGDATABASE=<db>` (pgbench takes the database
/// as its last argument, so it comes from the environment and callers can append options);
/// `PGPASSWORD` is up to the caller. No inherited `PG*` variables.
pub fn pgbench_command(host: &str, port: u16, user: &str, db: &str) -> Command {
    let mut cmd = Command::new(client_bin("pgbench"));
    clean_pg_env(&mut cmd);
    cmd.args(["-h", host, "-p", &port.to_string(), "-U", user])
        .env("PGDATABASE", db)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    cmd
}

/// `tests/fixtures/pg_client.py`.
pub fn pg_client_script() -> PathBuf {
    crate::fixtures().join("pg_client.py")
}

/// The Python that runs `pg_client.py`: `$AGENTGATE_PYTHON`, else `python3` from PATH (as root,
/// possibly an interpreter other uids cannot enter; for another uid use `/usr/bin/python3`, which
/// has Debian's python3-psycopg).
pub fn python() -> String {
    std::env::var("AGENTGATE_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// `<python> pg_client.py <conninfo> <statements as JSON>`; see [`pg_client`].
pub fn pg_client_command_with(python: &str, conninfo: &str, statements: &[&str]) -> Command {
    let mut cmd = Command::new(python);
    clean_pg_env(&mut cmd);
    cmd.arg(pg_client_script())
        .arg(conninfo)
        .arg(serde_json::to_string(statements).expect("statements as JSON"))
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    cmd
}

/// [`pg_client_command_with`] with [`python()`].
pub fn pg_client_command(conninfo: &str, statements: &[&str]) -> Command {
    pg_client_command_with(&python(), conninfo, statements)
}

/// `<python> pg_client.py <conninfo> <statements> [binary]`: `statements` a JSON list whose
/// entries are SQL strings or `[sql, [params]]` (psycopg `%s` placeholders); `binary` asks for
/// results in binary format.
pub fn pg_client_command_json(conninfo: &str, statements: &Value, binary: bool) -> Command {
    let mut cmd = Command::new(python());
    clean_pg_env(&mut cmd);
    cmd.arg(pg_client_script())
        .arg(conninfo)
        .arg(statements.to_string())
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    if binary {
        cmd.arg("binary");
    }
    cmd
}

/// Runs `statements` in one transaction through psycopg 3 (extended query protocol, one
/// statement per entry) and returns the script's JSON:
/// `{"results": [[[col, ...], ...] | {"rowcount": n}, ...],
///   "error": null | {"sqlstate", "message", "severity", "detail"}}`.
/// Panics if the script exits non-zero (connection failure) or prints something else.
pub fn pg_client(conninfo: &str, statements: &[&str]) -> Value {
    let out = pg_client_command(conninfo, statements)
        .output()
        .expect("run pg_client.py");
    assert!(
        out.status.success(),
        "pg_client.py failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "pg_client.py printed {:?}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A PostgreSQL server behind a gateway. Workloads: `sql-agents` (`/<name>/job-*`, the JWT is
/// the password) and `file-agents` (`/<name>/svc-*`, token file [`PgGateway::token`]). Target
/// `pg` is 127.0.0.1:`pg_port`, logged in upstream as `user` with [`ROLE_PASSWORD`] from a
/// secret file only the gateway reads. Fields drop in order: the gateway goes before the cgroups.
pub struct PgGateway {
    pub gw: crate::Gateway,
    pub agent: crate::Cgroup,
    pub file_agent: crate::Cgroup,
    pub anchor: crate::Cgroup,
    pub pg: PgServer,
    pub token: crate::TokenFile,
    pub secret: PathBuf,
    pub name: String,
    pub listen: u16,
}

/// What goes into the policy besides the fixed parts.
#[derive(Clone)]
pub struct PgTargetOptions {
    pub user: String,
    /// YAML flow mapping for `upstream_tls`.
    pub upstream_tls: String,
    /// (cert, key) for `client_tls`.
    pub client_tls: Option<(PathBuf, PathBuf)>,
    /// Extra rules (YAML list items, indented by two spaces).
    pub extra_rules: String,
    /// `gateway.mask_key` read from this file (the key of the `hash` mask strategy). A
    /// `gateway` setting: it takes effect at start only, so keep it the same in `set_policy`.
    pub mask_key: Option<PathBuf>,
    /// Extra `gateway:` settings (YAML lines indented by two spaces, e.g. `approval_webhooks`).
    /// Like `mask_key`, keep it the same in `set_policy`.
    pub gateway_extra: String,
}

impl Default for PgTargetOptions {
    fn default() -> Self {
        Self {
            user: ROLE_SCRAM.into(),
            upstream_tls: "{mode: disable}".into(),
            client_tls: None,
            extra_rules: String::new(),
            mask_key: None,
            gateway_extra: String::new(),
        }
    }
}

/// The standard statement rule of these tests: agents may not change schemas or privileges.
pub const NO_DDL_RULE: &str = "  - name: no-ddl\n    effect: deny\n    when: {groups: [agents]}\n    targets: [pg]\n    statements: {classes: [ddl, dcl, admin]}\n";

impl PgGateway {
    pub fn start(
        tag: &str,
        listen: u16,
        pg_port: u16,
        pg_opts: PgOptions,
        opts: &PgTargetOptions,
    ) -> Self {
        Self::start_with_args(tag, listen, pg_port, pg_opts, opts, &[])
    }

    /// Like [`start`](Self::start), with `gateway_args` appended to `agentgate run` (e.g.
    /// `--admin-http 127.0.0.7:17984`, `--drain-secs 1`).
    pub fn start_with_args(
        tag: &str,
        listen: u16,
        pg_port: u16,
        pg_opts: PgOptions,
        opts: &PgTargetOptions,
        gateway_args: &[&str],
    ) -> Self {
        let args: Vec<String> = gateway_args.iter().map(|a| a.to_string()).collect();
        Self::start_prepared(tag, listen, pg_port, pg_opts, opts, false, |_| args).0
    }

    /// The general start: `prepare` runs once the target server is up (with its `agentdb`)
    /// and returns the extra `agentgate run` arguments. With `own_cgroup`, the gateway itself
    /// runs in the managed cgroup `/<name>/job-gateway` (matched by the agents' workload),
    /// returned with it.
    pub fn start_prepared(
        tag: &str,
        listen: u16,
        pg_port: u16,
        pg_opts: PgOptions,
        opts: &PgTargetOptions,
        own_cgroup: bool,
        prepare: impl FnOnce(&PgServer) -> Vec<String>,
    ) -> (Self, Option<crate::Cgroup>) {
        crate::require_root();
        let name = crate::unique(tag);
        let anchor = crate::Cgroup::create(&format!("/{name}"));
        let agent = crate::Cgroup::create(&format!("/{name}/job-1"));
        let file_agent = crate::Cgroup::create(&format!("/{name}/svc-1"));
        let own = own_cgroup.then(|| crate::Cgroup::create(&format!("/{name}/job-gateway")));
        let pg = PgServer::start(tag, pg_port, pg_opts);
        pg.create_db("agentdb");
        pg.sql_in(
            "agentdb",
            "CREATE TABLE items (id int PRIMARY KEY, name text, price float8, data bytea, tags text[], flag bool, at timestamptz);",
        );
        let args = prepare(&pg);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let secret = std::env::temp_dir().join(format!("{name}-pg-secret"));
        fs::write(&secret, format!("{ROLE_PASSWORD}\n")).expect("write secret");
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod secret");
        let token = crate::TokenFile::valid(tag);
        let gw = crate::Gateway::start_with_args(
            tag,
            &pg_policy(listen, &name, pg_port, &secret, &token.path, opts),
            own.as_ref(),
            &args,
        );
        gw.wait_classified(&agent.rel);
        gw.wait_classified(&file_agent.rel);
        (
            PgGateway {
                gw,
                agent,
                file_agent,
                anchor,
                pg,
                token,
                secret,
                name,
                listen,
            },
            own,
        )
    }

    /// This gateway's policy file with new options (the fixed parts unchanged).
    fn policy_text(&self, opts: &PgTargetOptions) -> String {
        pg_policy(
            self.listen,
            &self.name,
            self.pg.port,
            &self.secret,
            &self.token.path,
            opts,
        )
    }

    /// Replaces the policy (same fixed parts, new options) and waits until it is in force.
    pub fn set_policy(&self, opts: &PgTargetOptions) {
        let text = self.policy_text(opts);
        let before = self.gw.count("policy_applied");
        fs::write(self.gw.policy_dir().join("policy.yaml"), text).expect("write policy");
        self.gw.wait_for(
            Duration::from_secs(15),
            |e| e["event"] == "policy_applied",
            before,
        );
    }

    /// Writes a policy the gateway must refuse (same fixed parts, new options); waits for the
    /// `policy_refused` event and returns it. Panics if the gateway applies it instead.
    pub fn set_policy_refused(&self, opts: &PgTargetOptions) -> Value {
        let text = self.policy_text(opts);
        let applied = self.gw.count("policy_applied");
        let refused = self.gw.count("policy_refused");
        fs::write(self.gw.policy_dir().join("policy.yaml"), text).expect("write policy");
        let ev = self.gw.wait_for(
            Duration::from_secs(15),
            |e| e["event"] == "policy_refused" || e["event"] == "policy_applied",
            applied + refused,
        );
        assert_eq!(
            ev["event"], "policy_refused",
            "the gateway applied a policy it must refuse: {ev}\nrules:\n{}",
            opts.extra_rules
        );
        ev
    }

    /// The conninfo an agent uses: the database's own address; capture does the rest.
    pub fn agent_conninfo(&self, password: &str, sslmode: &str) -> String {
        conninfo(
            "127.0.0.1",
            self.pg.port,
            "agent",
            password,
            "agentdb",
            sslmode,
        )
    }

    /// The same database, directly, as the upstream role (for comparisons).
    pub fn direct_conninfo(&self, user: &str) -> String {
        conninfo(
            "127.0.0.1",
            self.pg.port,
            user,
            ROLE_PASSWORD,
            "agentdb",
            "disable",
        )
    }

    /// Backends of the agentgate_* roles (how many upstream sessions are open).
    pub fn upstream_backends(&self) -> usize {
        self.pg
            .sql("SELECT count(*) FROM pg_stat_activity WHERE usename LIKE 'agentgate_%';")
            .trim()
            .parse()
            .unwrap_or(usize::MAX)
    }

    /// Waits until no upstream session is left; false if some still are after `timeout`.
    pub fn wait_no_upstream(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.upstream_backends() == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for PgGateway {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.secret);
    }
}

pub fn pg_policy(
    listen: u16,
    name: &str,
    pg_port: u16,
    secret: &Path,
    token: &Path,
    o: &PgTargetOptions,
) -> String {
    let client_tls = match &o.client_tls {
        Some((c, k)) => format!(
            "\n      client_tls: {{cert_file: {}, key_file: {}}}",
            c.display(),
            k.display()
        ),
        None => String::new(),
    };
    let mask_key = match &o.mask_key {
        Some(path) => format!("  mask_key: {{from: file, path: {}}}\n", path.display()),
        None => String::new(),
    };
    format!(
        "version: 2\ngateway:\n  listen_port: {listen}\n{mask_key}{gateway_extra}\
         identity_providers:\n  - name: test-idp\n    issuer: {iss}\n    audiences: [{aud}]\n\
         \x20   jwks: {{from: file, path: {jwks}}}\n    algorithms: [RS256]\n\
         workloads:\n  - name: sql-agents\n    cgroup: \"/{name}/job-*\"\n    mode: host\n    token: {{from: credential}}\n\
         \x20 - name: file-agents\n    cgroup: \"/{name}/svc-*\"\n    mode: host\n    token: {{from: file, path: {token}}}\n\
         targets:\n  - name: pg\n    protocol: postgres\n    addresses: [\"127.0.0.1\"]\n    ports: [{pg_port}]\n\
         \x20   credential: {{from: file, path: {secret}}}\n    postgres:\n      user: {user}\n      upstream_tls: {tls}{client_tls}\n\
         rules:\n  - name: agents-to-pg\n    when: {{groups: [agents]}}\n    targets: [pg]\n{rules}",
        iss = crate::ISSUER,
        aud = crate::AUDIENCE,
        jwks = crate::fixtures().join("test-jwks.json").display(),
        token = token.display(),
        secret = secret.display(),
        user = o.user,
        tls = o.upstream_tls,
        rules = o.extra_rules,
        gateway_extra = o.gateway_extra,
    )
}

/// The tokio-postgres agent: `$PG_AGENT_BIN` (set by xtask), else the one built with this crate.
pub fn pg_agent_bin() -> PathBuf {
    crate::crate_bin("PG_AGENT_BIN", "pg-agent")
}

/// `tests/fixtures/pg_session.py`.
pub fn pg_session_script() -> PathBuf {
    crate::fixtures().join("pg_session.py")
}

/// `<python> pg_session.py <conninfo>`: an interactive psycopg 3 session (autocommit) that runs
/// one statement per JSON line on stdin and prints each notice as it arrives and each outcome,
/// one JSON object per line (see the script). No inherited `PG*` variables; stdin, stdout and
/// stderr are up to the caller.
pub fn pg_session_command(conninfo: &str) -> Command {
    let mut cmd = Command::new(python());
    clean_pg_env(&mut cmd);
    cmd.arg(pg_session_script())
        .arg(conninfo)
        .env("PGCONNECT_TIMEOUT", "10");
    cmd
}

/// `tests/fixtures/pg_raw.py`.
pub fn pg_raw_script() -> PathBuf {
    crate::fixtures().join("pg_raw.py")
}

/// `tests/fixtures/pg_wire.py`.
pub fn pg_wire_script() -> PathBuf {
    crate::fixtures().join("pg_wire.py")
}

/// `<python> pg_wire.py <host> <port> <password> <db>`: an interactive wire-protocol client that
/// sends exactly the messages it is given (one JSON list per stdin line) and prints every message
/// it receives as one JSON object per line (see the script). Logs in as user `agent`; stdin,
/// stdout and stderr are up to the caller.
pub fn pg_wire_command(host: &str, port: u16, password: &str, db: &str) -> Command {
    let mut cmd = Command::new(python());
    clean_pg_env(&mut cmd);
    cmd.arg(pg_wire_script())
        .arg(host)
        .arg(port.to_string())
        .arg(password)
        .arg(db);
    cmd
}

/// A token for an agent of group `agents` (the group the PostgreSQL tests' rules name), valid
/// for ten minutes.
pub fn agent_jwt(sub: &str) -> String {
    crate::mint(sub, &["agents"], crate::now(), crate::now() + 600)
}

/// A finished command's stdout and stderr, for assertion messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every text value (and blob, as text) in every table of the SQLite record: (table, column,
/// value).
pub fn record_values(db: &Path) -> Vec<(String, String, String)> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, json\n\
             c = sqlite3.connect(sys.argv[1])\n\
             out = []\n\
             for (t,) in c.execute(\"SELECT name FROM sqlite_master WHERE type IN ('table', 'view')\").fetchall():\n\
             \x20   cols = [r[1] for r in c.execute('PRAGMA table_info(\"%s\")' % t)]\n\
             \x20   for row in c.execute('SELECT * FROM \"%s\"' % t):\n\
             \x20       for col, v in zip(cols, row):\n\
             \x20           if isinstance(v, bytes):\n\
             \x20               v = v.decode('utf-8', 'replace')\n\
             \x20           if isinstance(v, str):\n\
             \x20               out.append([t, col, v])\n\
             print(json.dumps(out))",
        )
        .arg(db)
        .output()
        .expect("read record db");
    let rows: Vec<(String, String, String)> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("record db: {e}: {}", output_text(&out)));
    rows
}

/// `hmac:` + the first 16 lowercase hex digits of HMAC-SHA256(`key`, `value`), computed
/// by openssl, independently of the gateway.
pub fn hmac16(key: &str, value: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl dgst");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(value.as_bytes())
        .expect("write to openssl");
    let out = child.wait_with_output().expect("openssl dgst");
    assert!(out.status.success(), "openssl dgst: {}", output_text(&out));
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let hex = line
        .rsplit("= ")
        .next()
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("openssl dgst printed {line:?}"));
    format!("hmac:{}", &hex[..16])
}

/// psql (libpq, simple query protocol) running `sqls` (`-c` each) in the background in `cg`;
/// verbose errors (`ERROR:  42501: ...`), stops at the first error.
pub fn psql_bg(conn: &str, cg: &crate::Cgroup, sqls: &[&str]) -> crate::bg::Bg {
    let mut cmd = psql_command(conn);
    cmd.args([
        "-v",
        "VERBOSITY=verbose",
        "-v",
        "ON_ERROR_STOP=1",
        "-A",
        "-t",
    ]);
    for sql in sqls {
        cmd.args(["-c", sql]);
    }
    crate::bg::Bg::spawn("psql", cmd, cg)
}

/// An approval rule (YAML list item) for workload `sql-agents` on target `pg`.
pub fn approval_rule(name: &str, statements: &str, approval: &str) -> String {
    format!(
        "  - name: {name}\n    when: {{workloads: [sql-agents]}}\n    targets: [pg]\n    statements: {statements}\n    approval: {approval}\n"
    )
}

/// Writes to `tables` need approval when they touch more than 3 rows (`max_rows`).
pub fn max_rows_rule(tables: &str) -> String {
    approval_rule(
        "few-writes",
        &format!("{{classes: [write, write_unbounded], tables: [{tables}]}}"),
        "{approvers: [dba], timeout_secs: 120, max_rows: 3}",
    )
}

/// Rows of `table` in `agentdb` (asked directly, not through the gateway).
pub fn table_rows(p: &PgGateway, table: &str) -> i64 {
    p.pg.sql_in("agentdb", &format!("SELECT count(*) FROM {table};"))
        .trim()
        .parse()
        .expect("count(*)")
}

impl PgGateway {
    /// A gateway (root required) for PostgreSQL on `pg_port`, listening on `listen`, with
    /// `rules` added to the standard policy.
    pub fn with_rules(tag: &str, listen: u16, pg_port: u16, rules: String) -> Self {
        crate::require_root();
        PgGateway::start(
            tag,
            listen,
            pg_port,
            PgOptions::default(),
            &PgTargetOptions {
                extra_rules: rules,
                ..Default::default()
            },
        )
    }
}
