//! A raw wire-protocol client (`fixtures/pg_wire.py`) for tests that must send what libpq and
//! the drivers never do, in exactly the order they choose.

use std::time::Duration;

use serde_json::Value;

use crate::{bg::Bg, pg::pg_wire_command, pg::PgGateway};

const WAIT: Duration = Duration::from_secs(30);

/// A raw wire-protocol client (`fixtures/pg_wire.py`) in the agent's cgroup, logged in to `db`:
/// sends exactly the messages it is given, reports every message it gets.
pub struct Wire(pub Bg);

impl Wire {
    pub fn open(p: &PgGateway, jwt: &str, db: &str) -> Self {
        let mut w = Self(Bg::spawn(
            "pg_wire.py",
            pg_wire_command("127.0.0.1", p.pg.port, jwt, db),
            &p.agent,
        ));
        let v = w.next_message();
        assert_eq!(v["login"], true, "pg_wire.py: {v}");
        w
    }

    /// The next JSON object the client printed.
    pub fn next_message(&mut self) -> Value {
        let line = self.0.wait_line(WAIT, |err, l| !err && l.starts_with('{'));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("pg_wire.py printed {line}: {e}"))
    }

    /// Sends one command (a list of messages, or a `{"flood"|"close": …}` object).
    pub fn send(&mut self, cmd: &Value) {
        self.0.send_line(&cmd.to_string());
    }

    /// What came back up to and including the next ReadyForQuery (or the end of the connection).
    pub fn until_ready(&mut self) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            let v = self.next_message();
            let done = v["msg"] == "Z" || v["eof"] == true;
            got.push(v);
            if done {
                return got;
            }
        }
    }

    /// Sends `msgs` (ending with a Sync or being one Query) and returns the answer.
    pub fn exchange(&mut self, msgs: Value) -> Vec<Value> {
        self.send(&msgs);
        self.until_ready()
    }
}

/// The ErrorResponses among `got`.
pub fn wire_errors(got: &[Value]) -> Vec<Value> {
    got.iter().filter(|m| m["msg"] == "E").cloned().collect()
}

/// The one ErrorResponse among `got`.
pub fn only_error(got: &[Value]) -> Value {
    let errors = wire_errors(got);
    assert_eq!(errors.len(), 1, "expected one ErrorResponse, got: {got:?}");
    errors[0].clone()
}

pub fn no_error(what: &str, got: &[Value]) {
    assert!(wire_errors(got).is_empty(), "{what}: {got:?}");
}
