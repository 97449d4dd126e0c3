//! A second attack review of the relay's pending queue, portals and `max_rows` trials (after
//! 0c3953d, 08d9804, fa0aa99), end to end: a real PostgreSQL, the real gateway, real clients
//! (libpq through psycopg's `pq` module, psycopg, asyncpg, psql, the raw wire client
//! `fixtures/pg_wire.py`) in a managed cgroup whose connect() is captured. Each test shows one
//! problem, and each fails on 4fe8047: a legit client's session ended or its write held, a
//! masked value unmasked, or a write beyond `max_rows` run without approval. Nine pass since
//! the fixes that followed; two false positives are known and ignored until fixed (their
//! `#[ignore]` says why). Root required.
//!
//! Ports: PostgreSQL 19650+n, gateway listener 19675+n (n < 25).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use agentgate_tests::{bg::Bg, pg::*, wire::*, *};
use serde_json::{json, Value};

/// Test number `n`: (gateway listener, PostgreSQL port).
fn ports(n: u16) -> (u16, u16) {
    assert!(n < 25);
    (19675 + n, 19650 + n)
}

fn start(tag: &str, n: u16, rules: String) -> PgGateway {
    let (listen, pg_port) = ports(n);
    PgGateway::with_rules(tag, listen, pg_port, rules)
}

const MASK_EMAIL: &str = "  - name: mask-email\n    targets: [pg]\n    mask:\n      columns: [\"customers.email\"]\n      strategy: redact\n";

/// A computed column of the masked `customers.email`: masked only by what the gateway knows of
/// the statement (its RowDescription has no column origin).
const LEAK: &str = "SELECT upper(email) AS u FROM customers WHERE id = 1";
/// What a harmless statement with the same result shape looks like.
const HARMLESS: &str = "SELECT 'x'::text AS u";
const CLEAR: &str = "ALICE@EXAMPLE.COM";

fn masked_customers(tag: &str, n: u16, extra: &str) -> PgGateway {
    let p = start(tag, n, MASK_EMAIL.to_string());
    p.pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE customers (id int PRIMARY KEY, email text); \
             INSERT INTO customers VALUES (1, 'alice@example.com'); \
             CREATE TABLE sink (x int); {extra}"
        ),
    );
    p
}

/// Messages of `w` up to and including the first one `pred` accepts (or the end).
fn until(w: &mut Wire, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let v = w.next_message();
        let done = pred(&v) || v["eof"] == true;
        got.push(v);
        if done {
            return got;
        }
    }
}

/// Messages of `w` up to and including the `n`th ReadyForQuery (or the end).
fn until_ready_n(w: &mut Wire, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let mut seen = 0;
    loop {
        let v = w.next_message();
        let eof = v["eof"] == true;
        if v["msg"] == "Z" {
            seen += 1;
        }
        got.push(v);
        if eof || seen == n {
            return got;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A CopyData message carrying `data`, as hex for pg_wire.py's `raw`.
fn copy_data(data: &str) -> String {
    let mut m = vec![b'd'];
    m.extend_from_slice(&(4 + data.len() as i32).to_be_bytes());
    m.extend_from_slice(data.as_bytes());
    hex(&m)
}

const COPY_DONE: &str = "6300000004";
const SYNC: &str = "5300000004";

fn leaked(got: &[Value]) -> bool {
    got.iter().any(|m| m.to_string().contains(CLEAR))
}

/// The masked statement is masked when asked plainly (sanity for every masking test).
fn assert_masked_plainly(w: &mut Wire) {
    let got = w.exchange(json!([["Q", LEAK]]));
    let rows: Vec<Value> = got
        .iter()
        .filter(|m| m["msg"] == "D")
        .map(|m| m["row"].clone())
        .collect();
    assert_eq!(rows, vec![json!(["****"])], "{got:?}");
}

// ---------------------------------------------------------------------------------------------
// COPY FROM STDIN: messages the server consumes without answering, answers the gateway drops
// ---------------------------------------------------------------------------------------------

/// COPY FROM STDIN sent with the extended protocol, as libpq's PQexecParams (psycopg with
/// `pq`; psql 16's `\bind` and tokio-postgres `copy_in` send the same messages): Parse/Bind/Describe/Execute/Sync
/// in one write. The server sends CopyInResponse at the start of the COPY, but some errors
/// come before it reads any COPY data: a view (`cannot copy to view`, 42809), a BEFORE
/// STATEMENT trigger. The Sync of the batch was then not read in copy-in mode: the server
/// answers it (ReadyForQuery). The gateway took it for a Sync the server ignored
/// (`drop_ignored_syncs` after the error of an Execute that sent CopyInResponse) and dropped it
/// from the queue; its ReadyForQuery fits nothing, and the session ends with FATAL XX000
/// "out of step". Directly, libpq gets the error and the connection goes on.
#[test]
#[ignore = "known false positive, kept to be fixed: the gateway cannot tell which Syncs sent during a failed COPY FROM STDIN the server answered, and ends the session (docs/policy.md)"]
fn libpq_extended_copy_into_a_view_ends_the_session() {
    let p = start("atk2-copyview", 1, String::new());
    p.pg.sql_in(
        "agentdb",
        "CREATE TABLE base (x int); CREATE VIEW v AS SELECT x FROM base;",
    );
    // Real libpq, as an application that sends COPY with PQsendQueryParams: it gets
    // PGRES_COPY_IN, sends its data and PQputCopyEnd (CopyDone, Sync), then reads the results,
    // then runs another statement on the same connection.
    let script = r#"
import json, sys
from psycopg import pq
c = pq.PGconn.connect(sys.argv[1].encode())
out = {"connected": c.status == pq.ConnStatus.OK, "results": []}
def drain():
    while True:
        r = c.get_result()
        if r is None:
            return
        e = r.error_field(pq.DiagnosticField.SQLSTATE)
        out["results"].append([pq.ExecStatus(r.status).name, e.decode() if e else None])
        if r.status == pq.ExecStatus.COPY_IN:
            c.put_copy_data(b"1\n")
            c.put_copy_end(None)
c.send_query_params(b"COPY v FROM STDIN", None)
drain()
try:
    r = c.exec_(b"SELECT 41 + 1")
    out["after"] = [pq.ExecStatus(r.status).name, r.get_value(0, 0).decode() if r.status == pq.ExecStatus.TUPLES_OK else (r.error_message or b"").decode()]
except Exception as e:
    out["after"] = ["exception", str(e), (c.error_message or b"").decode()]
print(json.dumps(out))
"#;
    let run = |conninfo: &str, in_cgroup: bool| -> Value {
        let mut cmd = std::process::Command::new(python());
        clean_pg_env(&mut cmd);
        cmd.args(["-c", script, conninfo])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null());
        if in_cgroup {
            place(&mut cmd, Some(&p.agent), None);
        }
        let out = cmd.output().expect("python");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "libpq script printed {:?} ({e}); stderr {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let direct = run(&p.direct_conninfo(ROLE_SCRAM), false);
    assert_eq!(direct["after"], json!(["TUPLES_OK", "42"]), "{direct}");
    let gw = run(
        &p.agent_conninfo(&agent_jwt("agent-copyview"), "disable"),
        true,
    );
    assert_eq!(
        gw["after"], direct["after"],
        "through the gateway: {gw}; directly: {direct}"
    );
}

/// The same COPY into a view, as libpq sends it (Parse/Bind/Execute/Sync, then CopyData,
/// CopyDone, Sync), with two Queries behind. The gateway drops the batch's Sync; the server's
/// answer to it (skipping after the error) is taken for the second Sync's, and the second
/// Sync's for the first Query's (which fits: a Query is queued). The first Query's rows are
/// then judged as the second's: a Query of a computed masked column, then a harmless one, and
/// the e-mail in clear.
#[test]
fn extended_copy_failing_before_its_data_shifts_masking_to_the_wrong_statement() {
    let p = masked_customers(
        "atk2-copyview-mask",
        2,
        "CREATE VIEW v AS SELECT x FROM sink;",
    );
    let mut w = Wire::open(&p, &agent_jwt("agent-copyview-mask"), "agentdb");
    assert_masked_plainly(&mut w);
    w.send(&json!([
        ["P", "", "COPY v FROM STDIN"],
        ["B", "", "", []],
        ["E", ""],
        ["S"]
    ]));
    // What libpq sends once it has PGRES_COPY_IN (its data, PQputCopyEnd: CopyDone and Sync),
    // and two Queries behind.
    w.send(&json!({ "raw": format!("{}{COPY_DONE}{SYNC}", copy_data("1\n")) }));
    w.send(&json!([["Q", LEAK], ["Q", HARMLESS]]));
    let got = until_ready_n(&mut w, 4);
    assert!(
        !leaked(&got),
        "a masked column reached the agent unmasked: {got:?}"
    );
}

/// COPY FROM STDIN (simple Query) whose first row is bad: the server fails the COPY (22P02),
/// sends ReadyForQuery and is back in normal mode. A Sync the agent sent right behind that
/// CopyData (still "during the copy" for the gateway: no CopyDone yet) is answered by the
/// server, but the gateway drops it as one the server ignored in copy-in mode; its
/// ReadyForQuery is then taken for the next Query's, and the rows of that Query are judged as
/// the one after it.
#[test]
fn a_sync_after_a_failed_copy_row_shifts_masking_to_the_wrong_statement() {
    let p = masked_customers("atk2-copysync", 3, "");
    let mut w = Wire::open(&p, &agent_jwt("agent-copysync"), "agentdb");
    assert_masked_plainly(&mut w);
    w.send(&json!([["Q", "COPY sink FROM STDIN"]]));
    let got = until(&mut w, |m| m["msg"] == "G" || m["msg"] == "Z");
    assert_eq!(got.last().unwrap()["msg"], "G", "{got:?}");
    // One write: a bad row (sink.x is int), a Sync, two Queries.
    let mut raw = copy_data("not a number\n");
    raw.push_str(SYNC);
    w.send(&json!({ "raw": raw }));
    w.send(&json!([["Q", LEAK], ["Q", HARMLESS]]));
    let got = until_ready_n(&mut w, 4);
    assert!(
        !leaked(&got),
        "a masked column reached the agent unmasked: {got:?}"
    );
    // CopyDone after all: the server drops it outside copy mode.
    w.send(&json!({ "raw": COPY_DONE }));
}

// ---------------------------------------------------------------------------------------------
// Names the server reuses without a Bind or Parse the gateway sees
// ---------------------------------------------------------------------------------------------

/// The gateway keeps what it saw bound under a portal name until a Close or another Bind of
/// that name. But a transaction's end drops the server's portal (as does SQL `CLOSE`), and SQL
/// `DECLARE` makes a new one under the same name. An Execute of that name is then judged and
/// masked as the old statement: `DECLARE p CURSOR FOR SELECT upper(email) …` behind an old
/// Bind of `p` to `SELECT 'x'`, and the e-mail in clear.
#[test]
fn a_cursor_declared_under_a_stale_portal_name_is_unmasked() {
    let p = masked_customers("atk2-staleportal", 4, "");
    let mut w = Wire::open(&p, &agent_jwt("agent-staleportal"), "agentdb");
    assert_masked_plainly(&mut w);
    let _ = w.exchange(json!([["Q", "BEGIN"]]));
    let got = w.exchange(json!([["P", "s", HARMLESS], ["B", "p", "s", []], ["S"]]));
    no_error("Parse/Bind of the harmless statement", &got);
    let got = w.exchange(json!([["Q", "CLOSE p"]]));
    no_error("CLOSE p", &got);
    let got = w.exchange(json!([[
        "Q",
        "DECLARE p CURSOR FOR SELECT upper(email) AS u FROM customers WHERE id = 1"
    ]]));
    no_error("DECLARE p", &got);
    let got = w.exchange(json!([["E", "p"], ["S"]]));
    let _ = w.exchange(json!([["Q", "COMMIT"]]));
    assert!(
        !leaked(&got),
        "a masked column reached the agent unmasked: {got:?}"
    );
}

/// The same for statement names: SQL `DEALLOCATE` and `PREPARE` share the namespace of
/// protocol-level prepared statements. The gateway still holds the text of the old Parse under
/// the name; a Bind of it is judged, and its rows masked, as that text.
#[test]
fn a_statement_name_reprepared_with_sql_prepare_is_judged_by_its_old_text() {
    let p = masked_customers("atk2-stalestmt", 5, "");
    let mut w = Wire::open(&p, &agent_jwt("agent-stalestmt"), "agentdb");
    assert_masked_plainly(&mut w);
    let got = w.exchange(json!([["P", "s", HARMLESS], ["S"]]));
    no_error("Parse of the harmless statement", &got);
    let got = w.exchange(json!([["Q", "DEALLOCATE s"]]));
    no_error("DEALLOCATE s", &got);
    let got = w.exchange(json!([[
        "Q",
        "PREPARE s AS SELECT upper(email) AS u FROM customers WHERE id = 1"
    ]]));
    no_error("PREPARE s", &got);
    let got = w.exchange(json!([["B", "", "s", []], ["E", ""], ["S"]]));
    assert!(
        !leaked(&got),
        "a masked column reached the agent unmasked: {got:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// max_rows: what the trial's count does not see
// ---------------------------------------------------------------------------------------------

fn cascade_schema(p: &PgGateway) {
    p.pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE parent (id int PRIMARY KEY); INSERT INTO parent VALUES (1), (2); \
             CREATE TABLE child (id int, pid int REFERENCES parent ON DELETE CASCADE); \
             INSERT INTO child SELECT g, 1 FROM generate_series(1, 10) g; \
             ALTER TABLE parent OWNER TO {ROLE_SCRAM}; ALTER TABLE child OWNER TO {ROLE_SCRAM};"
        ),
    );
}

/// psql (simple Query protocol) running `sqls` in one session; what it printed.
fn psql_run(p: &PgGateway, sub: &str, sqls: &[&str]) -> String {
    let conn = p.agent_conninfo(&agent_jwt(sub), "disable");
    let mut cmd = psql_command(&conn);
    cmd.args(["-v", "VERBOSITY=verbose", "-A", "-t"]);
    for sql in sqls {
        cmd.args(["-c", sql]);
    }
    let mut c = Bg::spawn("psql", cmd, &p.agent);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && c.running() {
        if c.unread()
            .iter()
            .any(|(_, err, text)| *err && text.starts_with("NOTICE:  agentgate: approval"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let text = c.text();
    c.kill();
    text
}

/// The trial's count (`SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::int8 FROM
/// pg_catalog.pg_stat_xact_all_tables`) runs in the agent's session, under the agent's
/// search_path: its `+` and `sum` are looked up there. An operator `public.+ (bigint, bigint)`
/// that returns 0 and `SET search_path = public, pg_catalog` make every count 0, and the trial
/// falls back to the statement's own tag: a one-row DELETE that cascades to 10 rows passes
/// under max_rows 3.
#[test]
fn the_trial_count_uses_the_agents_operators() {
    let p = start("atk2-operator", 6, max_rows_rule("parent, child"));
    cascade_schema(&p);
    let out = psql_run(
        &p,
        "agent-operator",
        &[
            "CREATE FUNCTION public.zero_plus(bigint, bigint) RETURNS bigint \
             LANGUAGE sql IMMUTABLE AS 'SELECT 0::bigint'",
            "CREATE OPERATOR public.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.zero_plus)",
            "SET search_path = public, pg_catalog",
            "DELETE FROM parent WHERE id = 1",
        ],
    );
    assert_eq!(
        table_rows(&p, "child"),
        10,
        "a one-row DELETE removed 10 more rows under max_rows 3 without approval; psql: {out}"
    );
}

/// A deferred constraint trigger fires at COMMIT: after the trial's second count, at the
/// gateway's own COMMIT of a trial found within the limit. Whatever it writes is not counted:
/// one row deleted in the trial, and at COMMIT the trigger deletes every other row.
#[test]
fn a_deferred_trigger_writes_after_the_trial_counted() {
    let p = start("atk2-deferred", 7, max_rows_rule("big"));
    p.pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE big (x int); INSERT INTO big SELECT generate_series(1, 10); \
             ALTER TABLE big OWNER TO {ROLE_SCRAM};"
        ),
    );
    let out = psql_run(
        &p,
        "agent-deferred",
        &[
            "CREATE FUNCTION public.wipe() RETURNS trigger LANGUAGE plpgsql AS \
             'BEGIN DELETE FROM big; RETURN NULL; END'",
            "CREATE CONSTRAINT TRIGGER later AFTER DELETE ON big DEFERRABLE INITIALLY DEFERRED \
             FOR EACH ROW EXECUTE FUNCTION public.wipe()",
            "DELETE FROM big WHERE x = 1",
        ],
    );
    assert_eq!(
        table_rows(&p, "big"),
        10,
        "a one-row DELETE removed every row under max_rows 3 without approval; psql: {out}"
    );
}

/// TRUNCATE removes rows without counting them in `n_tup_del`: a one-row DELETE whose WHERE
/// calls a function that truncates another table of the rule passes as one row.
#[test]
fn a_truncate_inside_the_trial_is_not_counted() {
    let p = start("atk2-truncate", 8, max_rows_rule("big, small"));
    p.pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE big (x int); INSERT INTO big SELECT generate_series(1, 10); \
             CREATE TABLE small (x int); INSERT INTO small VALUES (1), (2); \
             ALTER TABLE big OWNER TO {ROLE_SCRAM}; ALTER TABLE small OWNER TO {ROLE_SCRAM};"
        ),
    );
    let out = psql_run(
        &p,
        "agent-truncate",
        &[
            "CREATE FUNCTION public.empty_big() RETURNS boolean LANGUAGE plpgsql AS \
             'BEGIN TRUNCATE big; RETURN true; END'",
            "DELETE FROM small WHERE x = 1 AND public.empty_big()",
        ],
    );
    assert_eq!(
        table_rows(&p, "big"),
        10,
        "TRUNCATE of 10 rows inside a one-row DELETE under max_rows 3 without approval; psql: {out}"
    );
}

/// asyncpg prepares with Parse/Describe/Flush and no Sync (`Connection.prepare`), and sends a
/// statement without arguments as a simple Query (`Connection.execute`). Behind such a
/// prepare, nothing is open on the server (both messages were answered, nothing failed, no
/// Execute ran), but the gateway counts the batch as open until a Sync and puts a one-row
/// DELETE under max_rows 3 to approvers untried: the agent waits for people (here 120 s) where
/// psql's identical DELETE runs at once.
#[test]
fn asyncpg_write_after_a_prepare_is_held_instead_of_tried() {
    let p = start("atk2-asyncpg", 9, max_rows_rule("big"));
    p.pg.sql_in(
        "agentdb",
        &format!(
            "CREATE TABLE big (x int); INSERT INTO big SELECT generate_series(1, 10); \
             ALTER TABLE big OWNER TO {ROLE_SCRAM};"
        ),
    );
    let script = r#"
import asyncio, json, sys
import asyncpg
async def main():
    c = await asyncpg.connect(sys.argv[1])
    if sys.argv[2] == "prepare":
        await c.prepare("SELECT x FROM big WHERE x = $1")
    tag = await c.execute("DELETE FROM big WHERE x = " + sys.argv[3])
    print(json.dumps({"tag": tag}), flush=True)
    await c.close()
asyncio.run(main())
"#;
    let conn = format!(
        "postgresql://agent:{}@127.0.0.1:{}/agentdb?sslmode=disable",
        agent_jwt("agent-asyncpg"),
        p.pg.port
    );
    let run = |prepare: &str, x: &str| -> String {
        let mut cmd = std::process::Command::new(python());
        clean_pg_env(&mut cmd);
        cmd.args(["-c", script, &conn, prepare, x]);
        let mut c = Bg::spawn("asyncpg", cmd, &p.agent);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && c.running() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = c.text();
        c.kill();
        text
    };
    // Without a prepare before it, the DELETE is tried and runs.
    let plain = run("no", "2");
    assert_eq!(table_rows(&p, "big"), 9, "asyncpg: {plain}");
    let out = run("prepare", "1");
    let requests = record_query(
        &p.gw.record_db(),
        "SELECT state, request FROM approval_requests",
    );
    assert_eq!(
        table_rows(&p, "big"),
        8,
        "a one-row DELETE under max_rows 3 did not run within 15 s; asyncpg: {out}; approval requests: {requests:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Masking of FETCH (not one of the new checks, seen while trying drivers' flows)
// ---------------------------------------------------------------------------------------------

/// psycopg's server-side cursors (`connection.cursor(name=…)`, the usual way to stream a large
/// result) run `DECLARE "srv" CURSOR FOR …` and then `FETCH FORWARD n FROM "srv"`. Under any
/// column mask rule, the gateway treats what a FETCH returns as unknown and redacts every
/// computed column, whatever the cursor reads: `generate_series` integers arrive as `****`
/// and psycopg fails to load them (ValueError). Directly: 1..5.
#[test]
#[ignore = "known over-masking, kept to be fixed: under column rules a FETCH's computed columns are redacted, the cursor's query is not remembered (docs/masking.md)"]
fn psycopg_server_side_cursor_of_unmasked_data_arrives_redacted() {
    let p = masked_customers("atk2-srvcursor", 10, "");
    let script = r#"
import json, sys
import psycopg
out = {}
try:
    with psycopg.connect(sys.argv[1]) as c:
        with c.cursor(name="srv") as cur:
            cur.execute("SELECT g FROM generate_series(1, 5) g")
            out["rows"] = [r[0] for r in cur.fetchall()]
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"#;
    let run = |conninfo: &str, in_cgroup: bool| -> Value {
        let mut cmd = std::process::Command::new(python());
        clean_pg_env(&mut cmd);
        cmd.args(["-c", script, conninfo])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null());
        if in_cgroup {
            place(&mut cmd, Some(&p.agent), None);
        }
        let out = cmd.output().expect("python");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "psycopg script printed {:?} ({e}); stderr {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let direct = run(&p.direct_conninfo(ROLE_SCRAM), false);
    assert_eq!(direct, json!({"rows": [1, 2, 3, 4, 5]}));
    let gw = run(
        &p.agent_conninfo(&agent_jwt("agent-srvcursor"), "disable"),
        true,
    );
    assert_eq!(gw, direct, "through the gateway: {gw}");
}

/// The same stale portal name, without any DECLARE or CLOSE in the agent's SQL: a PL/pgSQL
/// function (created by the agent) closes the portal the gateway saw bound and opens a cursor of
/// the same name (`refcursor` variables name portals). Tracking SQL `DECLARE`/`CLOSE` in the
/// classifier would not be enough.
#[test]
fn a_function_reopening_a_bound_portal_name_unmasks() {
    let p = masked_customers("atk2-reopen", 11, "");
    let mut w = Wire::open(&p, &agent_jwt("agent-reopen"), "agentdb");
    assert_masked_plainly(&mut w);
    let got = w.exchange(json!([[
        "Q",
        "CREATE FUNCTION reopen(name text) RETURNS text LANGUAGE plpgsql AS $$ \
         DECLARE c refcursor := name; \
         BEGIN CLOSE c; OPEN c FOR SELECT upper(email) AS u FROM customers WHERE id = 1; \
         RETURN 'ok'; END $$"
    ]]));
    no_error("CREATE FUNCTION", &got);
    let _ = w.exchange(json!([["Q", "BEGIN"]]));
    let got = w.exchange(json!([["P", "s", HARMLESS], ["B", "p", "s", []], ["S"]]));
    no_error("Parse/Bind of the harmless statement", &got);
    let got = w.exchange(json!([["Q", "SELECT reopen('p')"]]));
    no_error("SELECT reopen('p')", &got);
    let got = w.exchange(json!([["E", "p"], ["S"]]));
    let _ = w.exchange(json!([["Q", "COMMIT"]]));
    assert!(
        !leaked(&got),
        "a masked column reached the agent unmasked: {got:?}"
    );
}
