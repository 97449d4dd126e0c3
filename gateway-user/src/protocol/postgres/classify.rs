//! SQL statement classifier: what a query string would do, as one [`Class`] plus the relations
//! and functions it names, for the statement rules and the record.
//!
//! Design notes (the *why*):
//!
//! * **Fail closed.** Every downstream deny/approval rule matches [`Class::Opaque`], so anything
//!   this module cannot place — a parse error, a statement type it does not know, a procedure
//!   or prepared statement whose body it cannot see — is Opaque, never Read.
//! * **The whole tree, not the top-level tag.** A `SELECT` can hide a `DELETE` in a CTE, a
//!   privileged function call can sit in any expression (an array element, a named argument,
//!   a column default, a view body). pg_query's own `nodes()` walker only descends into the
//!   node kinds it cares about, so it is not used for classification. Instead the parse tree
//!   is fed through serde (every pg_query protobuf type derives `Serialize`) into a private
//!   [`Serializer`] that sees *every* field of *every* node, with the node's type name.
//!   Nothing is materialised along the way (no JSON tree), so memory (and recursion) stays
//!   proportional to the nesting depth, which prost's decoder already caps at 100 nested
//!   messages (about 50 levels of expression); deeper trees fail to decode and are Opaque.
//! * **Bounded cost.** Strings over [`MAX_QUERY_LEN`] are not parsed at all, and the LRU
//!   cache only keeps reasonably small query texts so that its memory is bounded by
//!   capacity × [`MAX_CACHED_LEN`] rather than capacity × 1 MiB.

use std::{
    collections::BTreeSet,
    num::NonZeroUsize,
    panic::{self, AssertUnwindSafe},
    sync::{Arc, Mutex},
};

use pg_query::protobuf;

use super::{
    predicate::{self, AExpr, Condition, MergeClause},
    settings,
};
use serde::ser::Serialize;

/// Longer query strings are Opaque without parsing (bounded parser cost) and are not cached.
pub const MAX_QUERY_LEN: usize = 1 << 20;

/// Longer query strings are classified but not kept in the cache: a cache entry holds its key,
/// so without this bound a full cache could hold capacity × 1 MiB of query text (with the
/// gateway's 10 000 entries, 4 KiB keeps it under 40 MiB). Longer texts are mostly bulk
/// literals, which rarely repeat exactly anyway.
const MAX_CACHED_LEN: usize = 4 * 1024;

pub use crate::statement::{Class, Classified, TableRef};

/// Classifies one query string (possibly several statements). Never panics, never fails: anything
/// it cannot understand is Opaque (fail closed: Opaque is matched by every deny/approval rule
/// downstream).
pub fn classify(sql: &str) -> Classified {
    if sql.len() > MAX_QUERY_LEN {
        return Classified::opaque(format!(
            "too long to classify ({} bytes, limit {MAX_QUERY_LEN})",
            sql.len()
        ));
    }
    // pg_query's ParseResult::new indexes and casts parse-tree nodes with panicking helpers; a
    // libpg_query shape it did not expect must become Opaque, not take the session task down.
    match panic::catch_unwind(AssertUnwindSafe(|| classify_unchecked(sql))) {
        Ok(c) => c,
        Err(_) => Classified::opaque("internal error while classifying"),
    }
}

/// Thread-safe cache by exact query text, shared by all sessions: agents repeat the same
/// statements, and parsing is the expensive part.
pub struct Classifier {
    cache: Mutex<lru::LruCache<String, Arc<Classified>>>,
}

impl Classifier {
    /// `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Classifier {
            cache: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    pub fn classify(&self, sql: &str) -> Arc<Classified> {
        if sql.len() > MAX_CACHED_LEN {
            return Arc::new(classify(sql));
        }
        if let Some(hit) = self.lock().get(sql) {
            return Arc::clone(hit);
        }
        // Parse without holding the lock: other sessions should not wait on this query.
        let fresh = Arc::new(classify(sql));
        let mut cache = self.lock();
        // Two sessions may have raced on the same text; keep (and hand out) the first entry so
        // every caller sees one Arc per text.
        if let Some(existing) = cache.get(sql) {
            return Arc::clone(existing);
        }
        cache.put(sql.to_owned(), Arc::clone(&fresh));
        fresh
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<String, Arc<Classified>>> {
        // Nothing panics while the lock is held, but a poisoned cache is still a valid cache.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn classify_unchecked(sql: &str) -> Classified {
    let parsed = match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(p) => p,
        // prost refuses trees nested deeper than its recursion limit (about 50 levels of
        // expression, e.g. `a + b + ...` with 50 terms); its message spells out the whole path.
        Err(pg_query::Error::Decode(e)) if e.to_string().contains("recursion limit") => {
            return Classified::opaque("parse tree too deeply nested to classify")
        }
        Err(e) => return Classified::opaque(clip(e.to_string())),
    };
    let mut walker = Walker::default();
    if let Err(e) = parsed.protobuf.serialize(&mut walker) {
        return Classified::opaque(format!("internal error while classifying: {e}"));
    }
    let statements = walker.statements.len();
    let mut verdict = Verdict::default();
    for v in walker.statements {
        verdict.raise(v.class, v.note);
    }
    Classified {
        class: verdict.class,
        tables: walker.tables.into_iter().collect(),
        functions: walker.functions.into_iter().collect(),
        statements,
        output_columns: walker.output_columns.into_iter().collect(),
        source_columns: walker.source_columns.into_iter().collect(),
        set_columns: walker.set_columns.into_iter().collect(),
        note: if verdict.class == Class::Opaque {
            // Every Opaque verdict carries a note; this is only a backstop.
            Some(verdict.note.unwrap_or_else(|| "unclassified".to_owned()))
        } else {
            None
        },
    }
}

/// Notes end up in logs and the record; a parser message quoting a huge statement should not.
fn clip(mut note: String) -> String {
    const MAX_NOTE: usize = 300;
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

// ---------------------------------------------------------------------------------------------
// Node type names.
//
// The walker identifies nodes by the type name serde reports. Each name is written through
// `node!`, which also names the pg_query type, so a misspelt name (or one renamed by a future
// pg_query) fails to compile instead of silently never matching.
// ---------------------------------------------------------------------------------------------

macro_rules! node {
    ($t:ident) => {{
        let _ = ::core::marker::PhantomData::<protobuf::$t>;
        stringify!($t)
    }};
}

const NODE: &str = node!(Node);
const RAW_STMT: &str = node!(RawStmt);
const STRING: &str = node!(String);
const INTEGER: &str = node!(Integer);
const FLOAT: &str = node!(Float);
const BOOLEAN: &str = node!(Boolean);
const BIT_STRING: &str = node!(BitString);
const LIST: &str = node!(List);
const DEF_ELEM: &str = node!(DefElem);
const RANGE_VAR: &str = node!(RangeVar);
const COLUMN_REF: &str = node!(ColumnRef);
const A_STAR: &str = node!(AStar);
const FETCH_STMT: &str = node!(FetchStmt);
const VIEW_STMT: &str = node!(ViewStmt);
const FUNC_CALL: &str = node!(FuncCall);
const A_CONST: &str = node!(AConst);
const PARAM_REF: &str = node!(ParamRef);
const A_EXPR: &str = node!(AExpr);
const BOOL_EXPR: &str = node!(BoolExpr);
const CURRENT_OF_EXPR: &str = node!(CurrentOfExpr);
const MERGE_WHEN_CLAUSE: &str = node!(MergeWhenClause);
const LOCKING_CLAUSE: &str = node!(LockingClause);
const INTO_CLAUSE: &str = node!(IntoClause);
const WITH_CLAUSE: &str = node!(WithClause);
const COMMON_TABLE_EXPR: &str = node!(CommonTableExpr);
const JOIN_EXPR: &str = node!(JoinExpr);
const ALTER_TABLE_CMD: &str = node!(AlterTableCmd);

const SELECT_STMT: &str = node!(SelectStmt);
const INSERT_STMT: &str = node!(InsertStmt);
const UPDATE_STMT: &str = node!(UpdateStmt);
const DELETE_STMT: &str = node!(DeleteStmt);
const MERGE_STMT: &str = node!(MergeStmt);
const EXPLAIN_STMT: &str = node!(ExplainStmt);
const COPY_STMT: &str = node!(CopyStmt);
const PREPARE_STMT: &str = node!(PrepareStmt);
const DECLARE_CURSOR_STMT: &str = node!(DeclareCursorStmt);
const VARIABLE_SET_STMT: &str = node!(VariableSetStmt);
const TRANSACTION_STMT: &str = node!(TransactionStmt);
const DROP_STMT: &str = node!(DropStmt);
const RENAME_STMT: &str = node!(RenameStmt);
const ALTER_OWNER_STMT: &str = node!(AlterOwnerStmt);
const ALTER_OBJECT_SCHEMA_STMT: &str = node!(AlterObjectSchemaStmt);
const ALTER_OBJECT_DEPENDS_STMT: &str = node!(AlterObjectDependsStmt);
const COMMENT_STMT: &str = node!(CommentStmt);
const SEC_LABEL_STMT: &str = node!(SecLabelStmt);
const DO_STMT: &str = node!(DoStmt);
const CALL_STMT: &str = node!(CallStmt);
const EXECUTE_STMT: &str = node!(ExecuteStmt);

/// Statements whose class does not depend on their fields. Anything ending in `Stmt` that is
/// neither here nor handled in [`statement_class`] is Opaque.
const FIXED_STATEMENT_CLASSES: &[(&str, Class)] = &[
    // Session and cursor housekeeping: no data or schema changes.
    (node!(VariableShowStmt), Class::Read),
    (node!(DiscardStmt), Class::Read),
    (node!(DeallocateStmt), Class::Read),
    (node!(FetchStmt), Class::Read),
    (node!(ClosePortalStmt), Class::Read),
    (node!(ListenStmt), Class::Read),
    (node!(UnlistenStmt), Class::Read),
    (node!(ConstraintsSetStmt), Class::Read),
    // RETURN only occurs in a SQL-standard function body; the CREATE FUNCTION around it is Ddl.
    (node!(ReturnStmt), Class::Read),
    // NOTIFY is seen by other sessions; LOCK blocks them.
    (node!(NotifyStmt), Class::Write),
    (node!(LockStmt), Class::Write),
    (node!(TruncateStmt), Class::WriteUnbounded),
    // Schema objects.
    (node!(CreateSchemaStmt), Class::Ddl),
    (node!(AlterTableStmt), Class::Ddl),
    (node!(ReplicaIdentityStmt), Class::Ddl),
    (node!(AlterCollationStmt), Class::Ddl),
    (node!(AlterDomainStmt), Class::Ddl),
    (node!(CreateStmt), Class::Ddl),
    (node!(CreateForeignServerStmt), Class::Ddl),
    (node!(AlterForeignServerStmt), Class::Ddl),
    (node!(CreateForeignTableStmt), Class::Ddl),
    (node!(CreateUserMappingStmt), Class::Ddl),
    (node!(AlterUserMappingStmt), Class::Ddl),
    (node!(DropUserMappingStmt), Class::Ddl),
    (node!(ImportForeignSchemaStmt), Class::Ddl),
    (node!(CreateTrigStmt), Class::Ddl),
    (node!(CreateSeqStmt), Class::Ddl),
    (node!(AlterSeqStmt), Class::Ddl),
    (node!(DefineStmt), Class::Ddl),
    (node!(CreateDomainStmt), Class::Ddl),
    (node!(CreateOpClassStmt), Class::Ddl),
    (node!(CreateOpFamilyStmt), Class::Ddl),
    (node!(AlterOpFamilyStmt), Class::Ddl),
    (COMMENT_STMT, Class::Ddl),
    (node!(IndexStmt), Class::Ddl),
    (node!(CreateStatsStmt), Class::Ddl),
    (node!(AlterStatsStmt), Class::Ddl),
    (node!(CreateFunctionStmt), Class::Ddl),
    (node!(AlterFunctionStmt), Class::Ddl),
    (node!(AlterOperatorStmt), Class::Ddl),
    (node!(AlterTypeStmt), Class::Ddl),
    (node!(RuleStmt), Class::Ddl),
    (node!(CompositeTypeStmt), Class::Ddl),
    (node!(CreateEnumStmt), Class::Ddl),
    (node!(CreateRangeStmt), Class::Ddl),
    (node!(AlterEnumStmt), Class::Ddl),
    (node!(ViewStmt), Class::Ddl),
    (node!(CreateTableAsStmt), Class::Ddl),
    (node!(RefreshMatViewStmt), Class::Ddl),
    (node!(CreateConversionStmt), Class::Ddl),
    (node!(CreateCastStmt), Class::Ddl),
    (node!(CreateTransformStmt), Class::Ddl),
    (node!(AlterTsDictionaryStmt), Class::Ddl),
    (node!(AlterTsConfigurationStmt), Class::Ddl),
    // Who may do what. Row-level security policies decide which rows a role sees, so they are
    // access control, not schema.
    (node!(GrantStmt), Class::Dcl),
    (node!(GrantRoleStmt), Class::Dcl),
    (node!(AlterDefaultPrivilegesStmt), Class::Dcl),
    (node!(CreateRoleStmt), Class::Dcl),
    (node!(AlterRoleStmt), Class::Dcl),
    (node!(AlterRoleSetStmt), Class::Dcl),
    (node!(DropRoleStmt), Class::Dcl),
    (node!(DropOwnedStmt), Class::Dcl),
    (node!(ReassignOwnedStmt), Class::Dcl),
    (SEC_LABEL_STMT, Class::Dcl),
    (node!(CreatePolicyStmt), Class::Dcl),
    (node!(AlterPolicyStmt), Class::Dcl),
    // Cluster-level operations, maintenance, and objects that only a superuser may create
    // because they run code or reach outside the database (event triggers, foreign-data
    // wrappers, procedural languages, access methods).
    (node!(AlterSystemStmt), Class::Admin),
    (node!(LoadStmt), Class::Admin),
    (node!(CreatedbStmt), Class::Admin),
    (node!(AlterDatabaseStmt), Class::Admin),
    (node!(AlterDatabaseRefreshCollStmt), Class::Admin),
    (node!(AlterDatabaseSetStmt), Class::Admin),
    (node!(DropdbStmt), Class::Admin),
    (node!(CreateTableSpaceStmt), Class::Admin),
    (node!(DropTableSpaceStmt), Class::Admin),
    (node!(AlterTableSpaceOptionsStmt), Class::Admin),
    (node!(AlterTableMoveAllStmt), Class::Admin),
    (node!(CreateExtensionStmt), Class::Admin),
    (node!(AlterExtensionStmt), Class::Admin),
    (node!(AlterExtensionContentsStmt), Class::Admin),
    (node!(CreateSubscriptionStmt), Class::Admin),
    (node!(AlterSubscriptionStmt), Class::Admin),
    (node!(DropSubscriptionStmt), Class::Admin),
    (node!(CreatePublicationStmt), Class::Admin),
    (node!(AlterPublicationStmt), Class::Admin),
    (node!(ClusterStmt), Class::Admin),
    (node!(VacuumStmt), Class::Admin),
    (node!(ReindexStmt), Class::Admin),
    (node!(CheckPointStmt), Class::Admin),
    (node!(CreateEventTrigStmt), Class::Admin),
    (node!(AlterEventTrigStmt), Class::Admin),
    (node!(CreateFdwStmt), Class::Admin),
    (node!(AlterFdwStmt), Class::Admin),
    (node!(CreatePLangStmt), Class::Admin),
    (node!(CreateAmStmt), Class::Admin),
];

// Field names, as serde reports them (the prost struct field names).
const WHERE_CLAUSE: &str = "where_clause";

// ---------------------------------------------------------------------------------------------
// Function and setting lists.
// ---------------------------------------------------------------------------------------------

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
    // `Walker::leave`, FUNC_CALL).
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

fn function_verdict(name: &str) -> (Class, Option<String>) {
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

// ---------------------------------------------------------------------------------------------
// Statement rules.
// ---------------------------------------------------------------------------------------------

/// The class a statement node adds by itself; its children's classes are combined by the caller.
/// `None` means "ignore the children" (plain EXPLAIN does not execute its statement).
fn statement_class(f: &Frame) -> Option<(Class, Option<String>)> {
    let class = match f.kind {
        // PREPARE and DECLARE only take the class of the statement they carry.
        SELECT_STMT | PREPARE_STMT | DECLARE_CURSOR_STMT => Class::Read,
        INSERT_STMT => Class::Write,
        // A WHERE that reads no column (`WHERE true`, `1 = 1`) is no WHERE; see `predicate`.
        UPDATE_STMT | DELETE_STMT if f.cond(WHERE_CLAUSE) == Some(true) => Class::Write,
        UPDATE_STMT | DELETE_STMT => Class::WriteUnbounded,
        MERGE_STMT
            if predicate::merge_unbounded(
                f.cond("join_condition") == Some(true),
                &f.merge_clauses,
            ) =>
        {
            Class::WriteUnbounded
        }
        MERGE_STMT => Class::Write,
        EXPLAIN_STMT if explain_executes(f) => Class::Read,
        EXPLAIN_STMT => return None,
        COPY_STMT => copy_class(f),
        VARIABLE_SET_STMT => return Some(setting_class(f)),
        TRANSACTION_STMT => return Some(transaction_class(f)),
        DROP_STMT => return Some(object_class(f.int("remove_type"))),
        RENAME_STMT => return Some(object_class(f.int("rename_type"))),
        ALTER_OWNER_STMT | ALTER_OBJECT_SCHEMA_STMT | ALTER_OBJECT_DEPENDS_STMT => {
            return Some(object_class(f.int("object_type")))
        }
        DO_STMT => return Some(opaque("DO block (procedural code is not classified)")),
        CALL_STMT => return Some(opaque("CALL (the procedure body is unknown)")),
        EXECUTE_STMT => {
            return Some(opaque(
                "EXECUTE of a prepared statement (its text is not in this query)",
            ))
        }
        kind => match FIXED_STATEMENT_CLASSES.iter().find(|(k, _)| *k == kind) {
            Some((_, class)) => *class,
            None => return Some(opaque(format!("unrecognised statement type {kind}"))),
        },
    };
    Some((class, None))
}

fn opaque(note: impl Into<String>) -> (Class, Option<String>) {
    (Class::Opaque, Some(note.into()))
}

/// EXPLAIN ANALYZE runs the statement; plain EXPLAIN only plans it. An ANALYZE option whose
/// value is anything but a clear "false" counts as on.
fn explain_executes(f: &Frame) -> bool {
    f.defelems.iter().any(|(name, arg)| {
        let name = name.to_ascii_lowercase();
        (name == "analyze" || name == "analyse")
            && !match arg {
                None => false,
                Some(Scalar::Bool(b)) => !b,
                Some(Scalar::Int(i)) => *i == 0,
                Some(Scalar::Str(s)) => matches!(
                    s.to_ascii_lowercase().as_str(),
                    "false" | "off" | "no" | "0" | "f" | "n"
                ),
            }
    })
}

/// COPY to or from a server file or program runs as the server's OS user; STDIN/STDOUT only
/// moves data over this connection.
fn copy_class(f: &Frame) -> Class {
    let program = f.bool("is_program").unwrap_or(false);
    let file = f.str("filename").is_some_and(|s| !s.is_empty());
    if program || file {
        Class::Admin
    } else if f.bool("is_from").unwrap_or(false) {
        Class::Write
    } else {
        Class::Read
    }
}

/// SET/RESET: judged by the setting's name (see [`settings::set_verdict`]). Setting names are
/// case-insensitive in PostgreSQL, also when quoted.
fn setting_class(f: &Frame) -> (Class, Option<String>) {
    settings::set_verdict(&f.str("name").unwrap_or("").to_ascii_lowercase())
}

/// Transaction control is Read, except two-phase commit: a prepared transaction outlives the
/// session and holds its locks until someone with the right privileges resolves it.
fn transaction_class(f: &Frame) -> (Class, Option<String>) {
    use protobuf::TransactionStmtKind as K;
    let kind = f
        .int("kind")
        .and_then(|k| i32::try_from(k).ok())
        .and_then(|k| K::try_from(k).ok());
    match kind {
        Some(K::TransStmtPrepare | K::TransStmtCommitPrepared | K::TransStmtRollbackPrepared) => {
            (Class::Admin, None)
        }
        Some(K::Undefined) | None => opaque("unrecognised transaction statement"),
        Some(_) => (Class::Read, None),
    }
}

/// DROP / ALTER ... RENAME / OWNER / SET SCHEMA / DEPENDS: the class follows the object, so that
/// `DROP DATABASE`-like effects reached through the generic statements land where the specific
/// statements do.
fn object_class(object_type: Option<i64>) -> (Class, Option<String>) {
    use protobuf::ObjectType as O;
    let object = object_type
        .and_then(|k| i32::try_from(k).ok())
        .and_then(|k| O::try_from(k).ok());
    match object {
        Some(O::ObjectRole | O::ObjectPolicy | O::ObjectDefacl | O::ObjectParameterAcl) => {
            (Class::Dcl, None)
        }
        Some(
            O::ObjectDatabase
            | O::ObjectTablespace
            | O::ObjectExtension
            | O::ObjectPublication
            | O::ObjectPublicationNamespace
            | O::ObjectPublicationRel
            | O::ObjectSubscription
            | O::ObjectEventTrigger
            | O::ObjectFdw
            | O::ObjectLanguage
            | O::ObjectAccessMethod,
        ) => (Class::Admin, None),
        Some(O::Undefined) | None => opaque("unrecognised object type"),
        Some(_) => (Class::Ddl, None),
    }
}

/// Relations named as dotted string lists (DROP TABLE, COMMENT ON, SECURITY LABEL ON) rather
/// than as RangeVar nodes. For sub-objects of a table (column, trigger, rule, policy,
/// constraint) the last element is the sub-object's own name.
fn named_relations(f: &Frame, object_type: Option<i64>) -> Vec<TableRef> {
    use protobuf::ObjectType as O;
    let object = object_type
        .and_then(|k| i32::try_from(k).ok())
        .and_then(|k| O::try_from(k).ok());
    let drop_last = match object {
        Some(
            O::ObjectTable
            | O::ObjectView
            | O::ObjectMatview
            | O::ObjectForeignTable
            | O::ObjectSequence
            | O::ObjectIndex,
        ) => false,
        Some(
            O::ObjectColumn
            | O::ObjectTrigger
            | O::ObjectRule
            | O::ObjectPolicy
            | O::ObjectTabconstraint,
        ) => true,
        _ => return Vec::new(),
    };
    f.lists
        .iter()
        .filter_map(|(_, parts)| {
            let parts = if drop_last {
                parts.split_last().map(|(_, rest)| rest)?
            } else {
                &parts[..]
            };
            let (name, qualifier) = parts.split_last()?;
            Some(TableRef {
                schema: qualifier.last().cloned(),
                name: name.clone(),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The walker: a serde Serializer that receives the parse tree as a stream of typed events.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// The highest class found so far in a subtree, with the reason if that is Opaque.
#[derive(Debug)]
struct Verdict {
    class: Class,
    note: Option<String>,
}

/// A subtree with no statement or call in it adds nothing: the lowest class.
impl Default for Verdict {
    fn default() -> Self {
        Verdict {
            class: Class::Read,
            note: None,
        }
    }
}

impl Verdict {
    fn raise(&mut self, class: Class, note: Option<String>) {
        if class > self.class {
            self.class = class;
            self.note = note;
        } else if class == self.class && self.note.is_none() {
            self.note = note;
        }
    }
}

/// An unqualified name in a FROM list that may turn out to be a CTE of an enclosing statement.
/// `visible` limits which CTEs of the next WITH up can be meant: a non-recursive CTE's body
/// sees only the CTEs before it (so `WITH users AS (SELECT * FROM users)` reads the table).
#[derive(Debug)]
struct Pending {
    table: TableRef,
    visible: Option<usize>,
}

/// What the walker keeps about one node while its fields stream by. Only the path from the
/// root to the current node is alive at any time.
#[derive(Debug, Default)]
struct Frame {
    kind: &'static str,
    /// The field of this node currently being serialized: tells a child where it sits.
    field: &'static str,
    /// This node's own scalar fields.
    scalars: Vec<(&'static str, Scalar)>,
    /// Fields holding `Some(..)` or a non-empty list.
    present: Vec<&'static str>,
    /// Literal value nodes (String, Integer, ...) directly under a field, e.g. function names.
    values: Vec<(&'static str, Scalar)>,
    /// List nodes of strings under a field, e.g. the dotted names in DROP TABLE.
    lists: Vec<(&'static str, Vec<String>)>,
    /// DefElem options (name, literal argument), e.g. EXPLAIN's.
    defelems: Vec<(String, Option<Scalar>)>,
    verdict: Verdict,
    /// CTE names of this node's WITH clause (for a WithClause: collected so far).
    ctes: Vec<String>,
    pending: Vec<Pending>,
    /// Statement nodes directly below (for RawStmt: did it hold a statement at all?).
    statements: usize,
    /// For a FuncCall: its arguments in order, each the value of a constant (`$n` for a
    /// parameter) or `None` for anything else (NULL, an expression, a named argument).
    args: Vec<Option<String>>,
    /// A column is read somewhere below (for the conditions of writes, see `predicate`).
    reads_column: bool,
    /// For a BoolExpr: whether each argument bounds the rows.
    args_bounded: Vec<bool>,
    /// For an A_Expr: the column on each side (`None`: not a plain column).
    sides: Vec<Option<String>>,
    /// Whether the condition under `where_clause`, `join_condition` or `condition` bounds rows.
    conds: Vec<(&'static str, bool)>,
    /// For a MergeStmt: its WHEN clauses.
    merge_clauses: Vec<MergeClause>,
}

impl Frame {
    fn scalar(&self, field: &str) -> Option<&Scalar> {
        self.scalars
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, v)| v)
    }

    fn str(&self, field: &str) -> Option<&str> {
        match self.scalar(field) {
            Some(Scalar::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn int(&self, field: &str) -> Option<i64> {
        match self.scalar(field) {
            Some(Scalar::Int(i)) => Some(*i),
            _ => None,
        }
    }

    fn bool(&self, field: &str) -> Option<bool> {
        match self.scalar(field) {
            Some(Scalar::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// Whether the condition in `field` bounds the rows (`None`: there is none).
    fn cond(&self, field: &str) -> Option<bool> {
        self.conds
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, b)| *b)
    }

    fn take_scalar(&mut self, field: &str) -> Option<Scalar> {
        let i = self.scalars.iter().position(|(f, _)| *f == field)?;
        Some(self.scalars.swap_remove(i).1)
    }

    fn value_strings(&self, field: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(f, _)| *f == field)
            .filter_map(|(_, v)| match v {
                Scalar::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, Default)]
struct Walker {
    stack: Vec<Frame>,
    tables: BTreeSet<TableRef>,
    functions: BTreeSet<String>,
    output_columns: BTreeSet<String>,
    source_columns: BTreeSet<String>,
    set_columns: BTreeSet<String>,
    /// One verdict per top-level statement (RawStmt).
    statements: Vec<Verdict>,
}

impl Walker {
    fn enter(&mut self, kind: &'static str) {
        self.stack.push(Frame {
            kind,
            ..Frame::default()
        });
    }

    fn scalar(&mut self, v: Scalar) {
        if let Some(top) = self.stack.last_mut() {
            top.scalars.push((top.field, v));
        }
    }

    fn mark_present(&mut self) {
        if let Some(top) = self.stack.last_mut() {
            top.present.push(top.field);
        }
    }

    fn flush(&mut self, pending: Vec<Pending>) {
        self.tables.extend(pending.into_iter().map(|p| p.table));
    }

    /// A node is complete: turn what was collected into tables, functions and a class, and hand
    /// the rest to the parent.
    fn leave(&mut self) {
        let Some(mut f) = self.stack.pop() else {
            return;
        };
        let (parent_kind, parent_field) = self
            .stack
            .last()
            .map(|p| (p.kind, p.field))
            .unwrap_or(("", ""));
        let mut verdict = std::mem::take(&mut f.verdict);
        let mut pending = std::mem::take(&mut f.pending);
        if parent_kind == FUNC_CALL && parent_field == "args" {
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
        self.condition(&f, parent_kind, parent_field);
        // What a cursor returns was decided at its DECLARE, which may be long gone.
        if f.kind == FETCH_STMT && !f.bool("ismove").unwrap_or(false) {
            self.output_columns.insert(CURSOR_OUTPUT.to_owned());
        }

        match f.kind {
            STRING | INTEGER | FLOAT | BOOLEAN | BIT_STRING => {
                let field = match f.kind {
                    STRING => "sval",
                    INTEGER => "ival",
                    FLOAT => "fval",
                    BOOLEAN => "boolval",
                    _ => "bsval",
                };
                // prost/serde emit every field, defaults included, so the value is there.
                if let (Some(v), Some(p)) = (f.take_scalar(field), self.stack.last_mut()) {
                    p.values.push((parent_field, v));
                }
            }
            LIST => {
                let items = f.value_strings("items");
                if let Some(p) = self.stack.last_mut() {
                    p.lists.push((parent_field, items));
                }
            }
            DEF_ELEM => {
                let name = f.str("defname").unwrap_or("").to_owned();
                let arg = f
                    .values
                    .iter()
                    .find(|(field, _)| *field == "arg")
                    .map(|(_, v)| v.clone());
                if let Some(p) = self.stack.last_mut() {
                    p.defelems.push((name, arg));
                }
            }
            RANGE_VAR => {
                let name = f.str("relname").unwrap_or("");
                // In `FOR UPDATE OF x`, x names a FROM item (often an alias), not a relation.
                if !name.is_empty() && parent_kind != LOCKING_CLAUSE {
                    let schema = f.str("schemaname").filter(|s| !s.is_empty());
                    let catalog = f.str("catalogname").filter(|s| !s.is_empty());
                    let table = TableRef {
                        schema: schema.map(str::to_owned),
                        name: name.to_owned(),
                    };
                    // Only an unqualified FROM item can name a CTE; DML targets, DDL objects,
                    // COPY, LOCK, GRANT etc. always name relations.
                    let from_item = parent_kind == JOIN_EXPR
                        || matches!(
                            parent_field,
                            "from_clause" | "using_clause" | "source_relation"
                        );
                    if schema.is_none() && catalog.is_none() && from_item {
                        pending.push(Pending {
                            table,
                            visible: None,
                        });
                    } else {
                        self.tables.insert(table);
                    }
                }
            }
            A_STAR => {
                if let Some(p) = self.stack.last_mut() {
                    p.values.push((parent_field, Scalar::Str("*".into())));
                }
            }
            COLUMN_REF => {
                let under = |field: &str| self.stack.iter().any(|a| a.field == field);
                let (in_target, in_returning) = (under("target_list"), under("returning_clause"));
                // A view is read through its definition, which the gateway traces; creating
                // one copies nothing.
                let in_view = self.stack.iter().any(|a| a.kind == VIEW_STMT);
                // An argument of a function that writes (pg_notify, lo_from_bytea, …) goes
                // somewhere, wherever in the statement the call is.
                let in_writing_call = self.stack.iter().any(|a| {
                    a.kind == FUNC_CALL && {
                        let name = a.value_strings("funcname").join(".").to_lowercase();
                        function_verdict(&name).0 != Class::Read
                    }
                });
                let name = f.value_strings("fields").join(".").to_lowercase();
                // The nearest target list decides: an UPDATE's SET list, or a query's output.
                let in_set = self
                    .stack
                    .iter()
                    .rev()
                    .find(|a| a.field == "target_list")
                    .is_some_and(|a| a.kind == UPDATE_STMT);
                if !name.is_empty() {
                    if in_set && !in_returning && !in_writing_call {
                        self.set_columns.insert(name.clone());
                    } else if (in_target && !in_returning && !in_view) || in_writing_call {
                        self.source_columns.insert(name.clone());
                    }
                    if in_target || in_returning {
                        self.output_columns.insert(name);
                    }
                }
            }
            FUNC_CALL => {
                let name = f.value_strings("funcname").join(".").to_lowercase();
                if !name.is_empty() {
                    let (class, note) =
                        if matches!(name.as_str(), "set_config" | "pg_catalog.set_config") {
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
            // Row locks block other writers and need UPDATE privilege.
            LOCKING_CLAUSE => verdict.raise(Class::Write, None),
            // SELECT ... INTO creates a table.
            INTO_CLAUSE => verdict.raise(Class::Ddl, None),
            ALTER_TABLE_CMD => {
                use protobuf::AlterTableType as T;
                let subtype = f
                    .int("subtype")
                    .and_then(|k| i32::try_from(k).ok())
                    .and_then(|k| T::try_from(k).ok());
                // Turning row-level security on or off changes who sees which rows.
                if matches!(
                    subtype,
                    Some(
                        T::AtEnableRowSecurity
                            | T::AtDisableRowSecurity
                            | T::AtForceRowSecurity
                            | T::AtNoForceRowSecurity
                    )
                ) {
                    verdict.raise(Class::Dcl, None);
                }
            }
            COMMON_TABLE_EXPR => {
                if let Some(p) = self.stack.last_mut() {
                    // Unresolved names from this CTE's body can only mean the CTEs before it
                    // (unless the WITH turns out to be RECURSIVE; see WITH_CLAUSE).
                    for r in &mut pending {
                        r.visible = Some(p.ctes.len());
                    }
                    p.ctes.push(f.str("ctename").unwrap_or("").to_owned());
                }
            }
            WITH_CLAUSE => {
                if f.bool("recursive").unwrap_or(false) {
                    for r in &mut pending {
                        r.visible = None;
                    }
                }
                if let Some(p) = self.stack.last_mut() {
                    p.ctes.append(&mut f.ctes);
                }
            }
            RAW_STMT => {
                if f.statements == 0 {
                    verdict.raise(Class::Opaque, Some("not a recognised statement".to_owned()));
                }
                self.statements.push(verdict);
                self.flush(pending);
                return;
            }
            kind if kind.ends_with("Stmt") => {
                match statement_class(&f) {
                    Some((class, note)) => verdict.raise(class, note),
                    // Plain EXPLAIN: what it would run does not count.
                    None => verdict = Verdict::default(),
                }
                if matches!(kind, DROP_STMT | COMMENT_STMT | SEC_LABEL_STMT) {
                    let object_type = f.int("remove_type").or_else(|| f.int("objtype"));
                    self.tables.extend(named_relations(&f, object_type));
                }
                // Names that match one of this statement's CTEs (as far as visible) are CTE
                // references; the rest belong to an outer scope or are relations.
                pending.retain_mut(|r| {
                    let visible = match r.visible {
                        Some(n) => f.ctes.get(..n).unwrap_or(&[]),
                        None => &f.ctes[..],
                    };
                    r.visible = None;
                    !(r.table.schema.is_none() && visible.contains(&r.table.name))
                });
                if let Some(p) = self.stack.last_mut() {
                    p.statements += 1;
                }
            }
            _ => {}
        }

        match self.stack.last_mut() {
            Some(p) => {
                p.verdict.raise(verdict.class, verdict.note);
                p.pending.append(&mut pending);
            }
            None => self.flush(pending),
        }
    }
}

impl Walker {
    /// Hands what a write's conditions need (see `predicate`) from a finished node `f` to its
    /// parent.
    fn condition(&mut self, f: &Frame, parent_kind: &str, parent_field: &'static str) {
        let reads_column = f.reads_column || f.kind == COLUMN_REF;
        let operator = if f.kind == A_EXPR {
            f.value_strings("name")
        } else {
            Vec::new()
        };
        let bounded = predicate::bounded(&Condition {
            reads_column,
            bool_op: (f.kind == BOOL_EXPR).then(|| f.int("boolop").unwrap_or(0)),
            args_bounded: &f.args_bounded,
            a_expr: (f.kind == A_EXPR).then(|| AExpr {
                kind: f.int("kind").unwrap_or(0),
                operator: &operator,
                sides: &f.sides,
            }),
            current_of: f.kind == CURRENT_OF_EXPR,
        });
        let Some(p) = self.stack.last_mut() else {
            return;
        };
        p.reads_column |= reads_column;
        if parent_kind == BOOL_EXPR && parent_field == "args" {
            p.args_bounded.push(bounded);
        }
        if parent_kind == A_EXPR && matches!(parent_field, "lexpr" | "rexpr") {
            let column =
                (f.kind == COLUMN_REF).then(|| f.value_strings("fields").join(".").to_lowercase());
            p.sides.push(column);
        }
        if matches!(parent_field, WHERE_CLAUSE | "join_condition" | "condition") {
            p.conds.push((parent_field, bounded));
        }
        if f.kind == MERGE_WHEN_CLAUSE && parent_kind == MERGE_STMT {
            p.merge_clauses.push(MergeClause {
                match_kind: f.int("match_kind").unwrap_or(0),
                command: f.int("command_type").unwrap_or(0),
                condition_bounded: f.cond("condition") == Some(true),
            });
        }
    }
}

// The serde side of the walk: how the parse tree streams into `Walker` (classify_serde.rs).
#[path = "classify_serde.rs"]
mod serde_walk;

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;

/// In [`Classified::output_columns`]: a FETCH, whose rows come from a cursor's query.
pub const CURSOR_OUTPUT: &str = "<cursor>";

#[cfg(test)]
#[path = "classify_output_column_tests.rs"]
mod output_column_tests;
