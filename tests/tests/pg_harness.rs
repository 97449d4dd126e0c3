//! The PostgreSQL test harness itself (`agentgate_tests::pg`): a real PostgreSQL 15 server, direct
//! connections only (no gateway). Needs root; ports 17950-17959.

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use agentgate_tests::{
    pg::{
        conninfo, pg_client, pg_client_command, pgbench_command, psql, PgOptions, PgServer,
        ROLE_MD5, ROLE_PASSWORD, ROLE_PLAIN, ROLE_SCRAM, ROLE_TLS, SUPERUSER_PASSWORD,
    },
    require_root,
};
use serde_json::{json, Value};

/// `SELECT <expr>` over `conninfo`; Ok(trimmed output) or Err(stderr).
fn select(conninfo: &str, expr: &str) -> Result<String, String> {
    let out = psql(
        conninfo,
        &[
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("SELECT {expr}"),
        ],
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn port_closed(port: u16) -> bool {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
}

#[test]
fn tls_server_roles_auth_methods_and_client() {
    require_root();
    const PORT: u16 = 17950;
    let pg = PgServer::start("harness-tls", PORT, PgOptions { tls: true });
    pg.create_db("harness");

    // Each role gets in with its password, over IPv4 and IPv6, and is who it says.
    for role in [ROLE_SCRAM, ROLE_MD5, ROLE_PLAIN] {
        let got = select(
            &pg.conninfo(role, ROLE_PASSWORD, "harness", "disable"),
            "current_user",
        );
        assert_eq!(got.as_deref(), Ok(role), "{role} over 127.0.0.1");
        let v6 = conninfo("::1", PORT, role, ROLE_PASSWORD, "harness", "disable");
        assert_eq!(
            select(&v6, "current_user").as_deref(),
            Ok(role),
            "{role} over ::1"
        );
    }

    // The server says which method authenticated each of them.
    let log = pg.log_contents();
    for (role, method) in [
        (ROLE_SCRAM, "scram-sha-256"),
        (ROLE_MD5, "md5"),
        (ROLE_PLAIN, "password"),
    ] {
        let line = format!("connection authenticated: identity=\"{role}\" method={method} ");
        assert!(log.contains(&line), "no {line:?} in the log:\n{log}");
    }

    // Stored passwords: md5 for the md5 role, SCRAM for the others.
    let stored = |role: &str, pattern: &str| {
        pg.sql(&format!(
            "SELECT rolpassword LIKE '{pattern}' FROM pg_authid WHERE rolname = '{role}';"
        ))
    };
    assert_eq!(stored(ROLE_MD5, "md5%"), "t");
    assert_eq!(stored(ROLE_SCRAM, "SCRAM-SHA-256$%"), "t");
    assert_eq!(stored(ROLE_PLAIN, "SCRAM-SHA-256$%"), "t");
    assert_eq!(stored(ROLE_TLS, "SCRAM-SHA-256$%"), "t");

    // pg_hba as the server parsed it: the method of each role, and TLS only for agentgate_tls.
    let rules = pg.sql(
        "SELECT type || ' ' || array_to_string(user_name, ',') || ' ' || address || ' ' || auth_method \
         FROM pg_hba_file_rules WHERE type <> 'local' ORDER BY line_number;",
    );
    for rule in [
        "host agentgate_scram 127.0.0.1 scram-sha-256",
        "host agentgate_md5 127.0.0.1 md5",
        "host agentgate_plain 127.0.0.1 password",
        "hostssl agentgate_tls 127.0.0.1 scram-sha-256",
        "host agentgate_md5 ::1 md5",
        "host all 127.0.0.1 reject",
        "host all ::1 reject",
    ] {
        assert!(
            rules.lines().any(|l| l == rule),
            "no rule {rule:?} in\n{rules}"
        );
    }

    // Wrong passwords, unknown roles, and the superuser with a wrong password are refused.
    for role in [ROLE_SCRAM, ROLE_MD5, ROLE_PLAIN, ROLE_TLS, "postgres"] {
        let err = select(
            &pg.conninfo(role, "not-the-password", "harness", "prefer"),
            "1",
        )
        .expect_err("wrong password accepted");
        assert!(
            err.contains(&format!(
                "password authentication failed for user \"{role}\""
            )),
            "{role}: {err}"
        );
    }
    let err = select(
        &pg.conninfo("nobody_here", ROLE_PASSWORD, "harness", "disable"),
        "1",
    )
    .expect_err("unknown role accepted");
    assert!(err.contains("pg_hba.conf rejects connection"), "{err}");
    assert_eq!(
        select(
            &pg.conninfo("postgres", SUPERUSER_PASSWORD, "harness", "disable"),
            "current_user"
        )
        .as_deref(),
        Ok("postgres")
    );

    // agentgate_tls: in with a verified certificate (IP and DNS names), out without TLS.
    let ssl_now = "current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    assert_eq!(
        select(
            &pg.conninfo(ROLE_TLS, ROLE_PASSWORD, "harness", "verify-full"),
            ssl_now
        )
        .as_deref(),
        Ok("agentgate_tls true")
    );
    let ca = pg.ca_file();
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&ca)
            .expect("CA file")
            .permissions()
            .mode()
    };
    assert_eq!(mode & 0o004, 0o004, "CA file readable by anyone");
    for host in ["::1", "localhost"] {
        let c = conninfo(
            host,
            PORT,
            ROLE_TLS,
            ROLE_PASSWORD,
            "harness",
            "verify-full",
        ) + &format!(" sslrootcert={}", ca.display());
        assert_eq!(
            select(&c, ssl_now).as_deref(),
            Ok("agentgate_tls true"),
            "verify-full to {host}"
        );
    }
    let err = select(
        &pg.conninfo(ROLE_TLS, ROLE_PASSWORD, "harness", "disable"),
        "1",
    )
    .expect_err("agentgate_tls got in without TLS");
    assert!(err.contains("pg_hba.conf rejects connection"), "{err}");
    assert!(err.contains("no encryption"), "{err}");
    // Verification really happens: a CA that did not sign the server certificate fails.
    let other_ca = pg.dir.join("tls/server.crt");
    let c = conninfo(
        "127.0.0.1",
        PORT,
        ROLE_TLS,
        ROLE_PASSWORD,
        "harness",
        "verify-full",
    ) + &format!(" sslrootcert={}", other_ca.display());
    let err = select(&c, "1").expect_err("verified against the wrong CA");
    assert!(err.contains("certificate verify failed"), "{err}");
    // Other roles may use TLS too (sslmode=require).
    assert_eq!(
        select(
            &pg.conninfo(ROLE_MD5, ROLE_PASSWORD, "harness", "require"),
            ssl_now
        )
        .as_deref(),
        Ok("agentgate_md5 true")
    );
    let log = pg.log_contents();
    assert!(
        log.lines().any(|l| l.contains(
            "connection authorized: user=agentgate_tls database=harness application_name=psql SSL enabled"
        )),
        "{log}"
    );

    // pg_client.py: rows, row counts, and an error that rolls the transaction back.
    let scram = pg.conninfo(ROLE_SCRAM, ROLE_PASSWORD, "harness", "disable");
    let v = pg_client(
        &scram,
        &[
            "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(6,2))",
            "INSERT INTO items VALUES (1, 'apple', 1.50), (2, NULL, 20)",
            "SELECT id, name, price, id * 2 = 4 FROM items ORDER BY id",
            "UPDATE items SET price = price + 1",
            "SELECT count(*) FROM items WHERE false",
        ],
    );
    assert_eq!(
        v,
        json!({
            "results": [
                {"rowcount": -1},
                {"rowcount": 2},
                [["1", "apple", "1.50", "False"], ["2", null, "20.00", "True"]],
                {"rowcount": 2},
                [["0"]],
            ],
            "error": null,
        })
    );
    // Another role sees and changes the table (create_db's default privileges).
    let md5 = pg.conninfo(ROLE_MD5, ROLE_PASSWORD, "harness", "disable");
    let v = pg_client(
        &md5,
        &[
            "INSERT INTO items VALUES (3, 'pear', 3)",
            "INSERT INTO items VALUES (1, 'duplicate', 0)",
            "SELECT 'not reached'",
        ],
    );
    assert_eq!(v["results"], json!([{"rowcount": 1}]), "{v}");
    assert_eq!(v["error"]["sqlstate"], "23505", "{v}");
    assert_eq!(
        v["error"]["message"], "duplicate key value violates unique constraint \"items_pkey\"",
        "{v}"
    );
    let v = pg_client(&md5, &["SELECT id FROM items ORDER BY id"]);
    assert_eq!(
        v,
        json!({"results": [[["1"], ["2"]]], "error": null}),
        "the failed transaction was rolled back"
    );
    let v: Value = pg_client(&md5, &["SELECT 1/0"]);
    assert_eq!(v["error"]["sqlstate"], "22012", "{v}");
    // Connection failure: exit 1, the reason on stderr, nothing on stdout.
    let out = pg_client_command(
        &pg.conninfo(ROLE_MD5, "not-the-password", "harness", "disable"),
        &["SELECT 1"],
    )
    .output()
    .expect("run pg_client.py");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
        "{out:?}"
    );

    // pgbench through the helper, with a script that needs no pgbench tables.
    let script = pg.dir.join("select1.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let out = pgbench_command("127.0.0.1", PORT, ROLE_PLAIN, "harness")
        .env("PGPASSWORD", ROLE_PASSWORD)
        .args(["-n", "-c", "2", "-t", "20", "-f"])
        .arg(&script)
        .output()
        .expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("number of transactions actually processed: 40/40"),
        "{stdout}"
    );

    // Drop stops the server and removes everything.
    let dir = pg.dir.clone();
    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(port_closed(PORT), "port {PORT} still open");
}

#[test]
fn plain_server_has_no_tls() {
    require_root();
    const PORT: u16 = 17951;
    let pg = PgServer::start("harness-plain", PORT, PgOptions::default());
    assert_eq!(pg.sql("SHOW ssl;"), "off");
    assert_eq!(
        pg.sql("SELECT count(*) FROM pg_roles WHERE rolname = 'agentgate_tls';"),
        "0"
    );
    let err = select(
        &pg.conninfo(ROLE_SCRAM, ROLE_PASSWORD, "postgres", "require"),
        "1",
    )
    .expect_err("TLS without ssl=on");
    assert!(err.contains("server does not support SSL"), "{err}");
    // Database `postgres` keeps PUBLIC's CONNECT, so the roles get in there too.
    assert_eq!(
        select(
            &pg.conninfo(ROLE_SCRAM, ROLE_PASSWORD, "postgres", "disable"),
            "current_user"
        )
        .as_deref(),
        Ok(ROLE_SCRAM)
    );
    // A second database for another role as owner.
    pg.create_db_owned("owned", ROLE_PLAIN);
    assert_eq!(
        pg.sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'owned';"),
        ROLE_PLAIN
    );
    let dir = pg.dir.clone();
    drop(pg);
    assert!(!dir.exists());
    assert!(port_closed(PORT));
}
