//! Function calls: which functions are privileged, write, or read relations not named in the
//! query, and what the walker records about each call.

use super::{
    frame::{Frame, Scalar, Verdict},
    nodes::{A_CONST, PARAM_REF},
    settings,
    walker::Walker,
    Class,
};

/// Matched against the unqualified, lower-case name, whatever schema it was written with: a
/// same-named function in another schema is far more likely an extension's copy (dblink lives
/// wherever it was installed) than an innocent namesake, and over-matching fails closed.
const ADMIN_FUNCTIONS: &[&str] = &[
    // Other sessions and the server process.
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_log_backend_memory_contexts",
    // Server file system.
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "lo_import",
    "lo_export",
    "pg_logdir_ls",
    // Recovery, WAL and backups.
    "pg_promote",
    "pg_create_restore_point",
    "pg_switch_wal",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    // Replication slots: a forgotten slot retains WAL until the disk fills.
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_slot_advance",
    "pg_import_system_collations",
];

const ADMIN_FUNCTION_PREFIXES: &[&str] = &[
    // dblink, dblink_exec, dblink_connect, ...: arbitrary SQL on another connection.
    "dblink",
    // pg_ls_dir, pg_ls_logdir, pg_ls_waldir, ...: server directory listings.
    "pg_ls_",
    // adminpack: pg_file_write, pg_file_unlink, ...
    "pg_file_",
    "pg_stat_reset",
    "pg_replication_origin_",
    "pg_logical_slot_",
];

/// Functions that run SQL given as a string, or read whole tables/schemas named by argument:
/// the relations they touch are not in the parse tree, so table rules could not see them.
const OPAQUE_FUNCTIONS: &[&str] = &[
    // Changes settings by name given as a value: role, search_path, and the ones that change
    // how the server reads SQL text. Judged by name where its arguments are constants (see
    // `Walker::function_call`).
    "set_config",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    // Run a cursor's query, which was named at its DECLARE.
    "cursor_to_xml",
    "cursor_to_xmlschema",
];

/// Functions that change persistent state (sequences, large objects) or other sessions' view
/// (pg_notify is NOTIFY).
const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "pg_notify",
    "lo_create",
    "lo_creat",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
];

pub(super) fn function_verdict(name: &str) -> (Class, Option<String>) {
    let base = name.rsplit('.').next().unwrap_or(name);
    if OPAQUE_FUNCTIONS.contains(&base) {
        (
            Class::Opaque,
            Some(format!(
                "function {name} reads relations that are not named in the query"
            )),
        )
    } else if ADMIN_FUNCTIONS.contains(&base)
        || ADMIN_FUNCTION_PREFIXES.iter().any(|p| base.starts_with(p))
    {
        (Class::Admin, None)
    } else if WRITE_FUNCTIONS.contains(&base) {
        (Class::Write, None)
    } else {
        (Class::Read, None)
    }
}

impl Walker {
    /// An argument of a function call is complete: hand the parent FuncCall its value if it is a
    /// constant.
    pub(super) fn call_argument(&mut self, f: &Frame) {
        let constant = (f.kind == A_CONST)
            .then(|| {
                f.values.first().map(|(_, v)| match v {
                    Scalar::Str(s) => s.clone(),
                    Scalar::Int(i) => i.to_string(),
                    Scalar::Bool(b) => b.to_string(),
                })
            })
            .flatten();
        // A parameter is a value the client supplies, like a constant (asyncpg restores jit
        // with `set_config('jit', $1, false)`), not one read from a table.
        let constant = constant.or_else(|| {
            (f.kind == PARAM_REF).then(|| format!("${}", f.int("number").unwrap_or(0)))
        });
        if let Some(p) = self.stack.last_mut() {
            p.args.push(constant);
        }
    }

    /// A FuncCall is complete: record the function and raise the verdict by what it does.
    pub(super) fn function_call(&mut self, f: &Frame, verdict: &mut Verdict) {
        let name = f.value_strings("funcname").join(".").to_lowercase();
        if !name.is_empty() {
            let (class, note) = if matches!(name.as_str(), "set_config" | "pg_catalog.set_config") {
                let setting = f.args.first().cloned().flatten();
                let setting = setting.map(|s| s.to_ascii_lowercase());
                let constant = f.args.iter().all(Option::is_some);
                settings::set_config_verdict(setting.as_deref(), constant)
            } else {
                function_verdict(&name)
            };
            verdict.raise(class, note);
            self.functions.insert(name);
        }
    }
}
