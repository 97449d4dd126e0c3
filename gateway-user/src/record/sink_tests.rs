//! Unit tests of `sink`.

use tokio_postgres::config::SslMode;

use super::*;

fn sink(conninfo: &str) -> Result<Sink, String> {
    Sink::new(SinkConfig {
        conninfo: conninfo.into(),
        password_file: None,
        node: "n1".into(),
    })
}

#[test]
fn plain_connections_only_to_loopback() {
    for ok in [
        "host=127.0.0.1 port=5432 user=u sslmode=disable",
        "host=::1 user=u sslmode=disable",
        "host=localhost user=u sslmode=disable",
        "host=/run/postgresql user=u sslmode=disable",
        "hostaddr=127.0.0.1 user=u sslmode=disable",
        "postgresql://u@127.0.0.1:5433/audit?sslmode=disable",
    ] {
        let s = sink(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert!(
            s.endpoints.iter().all(|e| e.mode == SslMode::Disable),
            "{ok}"
        );
    }
    for refused in [
        "host=db.example.com user=u sslmode=disable",
        "host=10.1.2.3 user=u sslmode=allow",
        "host=127.0.0.1,db.example.com user=u sslmode=disable",
        "host=localhost hostaddr=192.0.2.7 user=u sslmode=disable",
        "postgresql://u@db.example.com/audit?sslmode=disable",
    ] {
        let e = sink(refused).err().unwrap_or_else(|| panic!("{refused}"));
        assert!(e.contains("loopback"), "{refused}: {e}");
    }
    // Elsewhere TLS is required, whatever prefer says; on loopback it is tried.
    let s = sink("host=db.example.com,127.0.0.1 user=u").unwrap();
    let modes: Vec<SslMode> = s.endpoints.iter().map(|e| e.mode).collect();
    assert_eq!(modes, [SslMode::Require, SslMode::Prefer]);
    assert_eq!(
        s.endpoints[0].server_name,
        Some(ServerName::try_from("db.example.com").unwrap())
    );
    // hostaddr connects, host names the certificate.
    let s = sink("host=db.example.com hostaddr=192.0.2.7 port=6432 user=u").unwrap();
    assert_eq!(s.endpoints[0].to_string(), "192.0.2.7:6432");
    assert_eq!(
        s.endpoints[0].server_name,
        Some(ServerName::try_from("db.example.com").unwrap())
    );
}

#[test]
fn bad_configurations_say_what_is_wrong() {
    let e = sink("host=127.0.0.1").err().unwrap();
    assert!(e.contains("user"), "{e}");
    let e = sink("host=127.0.0.1 user=u sslmode=sometimes")
        .err()
        .unwrap();
    assert!(e.contains("sslmode"), "{e}");
    let e = sink("host=127.0.0.1 user=u sslrootcert=/nonexistent/ca.pem")
        .err()
        .unwrap();
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    let e = sink("host=127.0.0.1 user='u").err().unwrap();
    assert!(e.contains("unterminated"), "{e}");
    let e = Sink::new(SinkConfig {
        conninfo: "host=127.0.0.1 user=u".into(),
        password_file: Some("/nonexistent/pw".into()),
        node: "n".into(),
    })
    .err()
    .unwrap();
    assert!(e.contains("/nonexistent/pw"), "{e}");
}

#[test]
fn tls_settings_are_taken_out_of_the_connection_string() {
    let s = split_conninfo(
        "host = 10.0.0.1 sslrootcert='/etc/a b\\'s/ca.pem' user=u dbname='my db' sslmode=verify-full",
    )
    .unwrap();
    assert_eq!(s.sslmode.as_deref(), Some("verify-full"));
    assert_eq!(s.sslrootcert.as_deref(), Some("/etc/a b's/ca.pem"));
    let c: tokio_postgres::Config = s.rest.parse().unwrap();
    assert_eq!(c.get_dbname(), Some("my db"));
    assert_eq!(c.get_user(), Some("u"));
    let s = split_conninfo(
        "postgresql://u@db.example.com/audit?sslrootcert=%2Fetc%2Fca.pem&application_name=x&sslmode=require",
    )
    .unwrap();
    assert_eq!(s.sslrootcert.as_deref(), Some("/etc/ca.pem"));
    assert_eq!(s.sslmode.as_deref(), Some("require"));
    assert_eq!(
        s.rest,
        "postgresql://u@db.example.com/audit?application_name=x"
    );
}
