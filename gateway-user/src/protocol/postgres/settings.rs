//! Session settings, judged by name. `SET name …` and `SELECT set_config('name', …)` change the
//! same thing, so they are judged alike where the name is known: a few settings are access
//! control or change how the server reads SQL text, most only tune the session.
//!
//! `set_config` is stricter than `SET`: its name and value are expressions, so it can move a
//! value read from a table into a setting (and `current_setting` hands it back later, past the
//! masking of the statement that read it). Only a call whose arguments are all constants and
//! whose setting is on [`HARMLESS`] is an ordinary read; every other call stays Opaque.

use super::classify::Class;

/// Settings that change the server's lexer; `SET NAMES` is `client_encoding`. The gateway's
/// parser assumes the defaults, so after a change it would no longer see what the server runs.
pub const LEXER_SETTINGS: &[&str] = &[
    "standard_conforming_strings",
    "client_encoding",
    "backslash_quote",
];

/// Settings that SET can change but which are superuser-only for a reason: they switch off
/// triggers and foreign keys, catalog protections, data checks, or the audit trail.
const ADMIN_SETTINGS: &[&str] = &[
    "session_replication_role",
    "allow_system_table_mods",
    "allow_in_place_tablespaces",
    "ignore_system_indexes",
    "ignore_checksum_failure",
    "ignore_invalid_pages",
    "zero_damaged_pages",
    "lo_compat_privileges",
];

/// `log_statement`, `log_min_duration_statement`, ...; `pgaudit.log`, ...
const ADMIN_SETTING_PREFIXES: &[&str] = &["log_", "pgaudit."];

/// Settings that cannot change which relations a statement reads, what it returns, who runs it
/// or how its text is read: time limits, planner and JIT knobs, output styles of dates and
/// numbers, the application name. Drivers set these on their own (asyncpg's type introspection
/// runs `set_config('jit', 'off', false)`).
const HARMLESS: &[&str] = &[
    "application_name",
    "client_min_messages",
    "datestyle",
    "intervalstyle",
    "timezone",
    "extra_float_digits",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "work_mem",
    "maintenance_work_mem",
    "temp_buffers",
    "effective_cache_size",
    "effective_io_concurrency",
    "random_page_cost",
    "seq_page_cost",
    "cpu_tuple_cost",
    "cpu_index_tuple_cost",
    "cpu_operator_cost",
    "from_collapse_limit",
    "join_collapse_limit",
    "geqo",
    "plan_cache_mode",
    "max_parallel_workers_per_gather",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "default_transaction_deferrable",
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
];

/// Prefixes of families of [`HARMLESS`] settings: `jit`, `jit_above_cost`, `enable_seqscan`, …
const HARMLESS_PREFIXES: &[&str] = &["jit", "enable_", "geqo_", "parallel_"];

/// A harmless setting, by its lower-case name.
pub fn harmless(name: &str) -> bool {
    HARMLESS.contains(&name) || HARMLESS_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// `SET` / `RESET` of `name` (lower-case; PostgreSQL folds setting names, also quoted ones):
/// changing the current role is access control, a few settings are Admin, the lexer's are
/// Opaque, the rest are session-local and Read.
pub fn set_verdict(name: &str) -> (Class, Option<String>) {
    match name {
        // SET ROLE, RESET ROLE, SET SESSION AUTHORIZATION, SET role = ...
        "role" | "session_authorization" => (Class::Dcl, None),
        n if LEXER_SETTINGS.contains(&n) => (
            Class::Opaque,
            Some(format!("SET {n} changes how SQL text is read")),
        ),
        n if ADMIN_SETTINGS.contains(&n)
            || ADMIN_SETTING_PREFIXES.iter().any(|p| n.starts_with(p)) =>
        {
            (Class::Admin, None)
        }
        _ => (Class::Read, None),
    }
}

/// A call of `set_config(name, value, is_local)`. `name` is the lower-case setting name when the
/// first argument is a string constant; `constant_args` says whether every argument is one.
pub fn set_config_verdict(name: Option<&str>, constant_args: bool) -> (Class, Option<String>) {
    match name {
        Some(n) if constant_args && harmless(n) => (Class::Read, None),
        Some(n) if constant_args => (
            Class::Opaque,
            Some(format!(
                "set_config of setting {n} (only settings that cannot change what a statement \
                 reads or who runs it are judged by name; use SET)"
            )),
        ),
        _ => (
            Class::Opaque,
            Some(
                "set_config with a setting name or value that is not a constant (it can move \
                 any value into a setting)"
                    .to_owned(),
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harmless_names_and_families() {
        for n in [
            "jit",
            "jit_above_cost",
            "enable_seqscan",
            "statement_timeout",
        ] {
            assert!(harmless(n), "{n}");
        }
        for n in [
            "search_path",
            "role",
            "session_authorization",
            "client_encoding",
            "standard_conforming_strings",
            "row_security",
            "log_statement",
            "bytea_output",
            "",
        ] {
            assert!(!harmless(n), "{n}");
        }
    }

    #[test]
    fn set_config_needs_constants_and_a_harmless_name() {
        assert_eq!(set_config_verdict(Some("jit"), true).0, Class::Read);
        assert_eq!(set_config_verdict(Some("jit"), false).0, Class::Opaque);
        assert_eq!(set_config_verdict(None, true).0, Class::Opaque);
        assert_eq!(
            set_config_verdict(Some("search_path"), true).0,
            Class::Opaque
        );
        assert_eq!(set_config_verdict(Some("role"), true).0, Class::Opaque);
    }
}
