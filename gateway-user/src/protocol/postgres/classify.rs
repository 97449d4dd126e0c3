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
    fmt,
    num::NonZeroUsize,
    panic::{self, AssertUnwindSafe},
    sync::{Arc, Mutex},
};

use pg_query::protobuf;

use super::{
    predicate::{self, AExpr, Condition, MergeClause},
    settings,
};
use serde::ser::{self, Serialize, Serializer};

/// Longer query strings are Opaque without parsing (bounded parser cost) and are not cached.
pub const MAX_QUERY_LEN: usize = 1 << 20;

/// Longer query strings are classified but not kept in the cache: a cache entry holds its key,
/// so without this bound a full cache could hold capacity × 1 MiB of query text (with the
/// gateway's 10 000 entries, 4 KiB keeps it under 40 MiB). Longer texts are mostly bulk
/// literals, which rarely repeat exactly anyway.
const MAX_CACHED_LEN: usize = 4 * 1024;

/// Ordered from least to most privileged; a statement's class is the highest found anywhere in it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Read,
    Write,
    WriteUnbounded,
    Ddl,
    Dcl,
    Admin,
    Opaque,
}

impl Class {
    #[allow(dead_code)] // used by the relay (in progress)
    pub const ALL: [Class; 7] = [
        Class::Read,
        Class::Write,
        Class::WriteUnbounded,
        Class::Ddl,
        Class::Dcl,
        Class::Admin,
        Class::Opaque,
    ];

    /// The same spelling as the serde (policy file / record) form.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::WriteUnbounded => "write_unbounded",
            Class::Ddl => "ddl",
            Class::Dcl => "dcl",
            Class::Admin => "admin",
            Class::Opaque => "opaque",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A relation named in a statement. The schema is only known when the statement qualifies the
/// name: the session's search_path is not known here.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct TableRef {
    pub schema: Option<String>,
    pub name: String,
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Classified {
    pub class: Class,
    /// Every relation referenced anywhere, deduplicated and sorted (unqualified names first,
    /// then by schema). CTE names are not relations and are left out; DML targets and DDL
    /// objects are always relations.
    pub tables: Vec<TableRef>,
    /// Every function called, lower-case, schema-qualified if written so
    /// ("pg_catalog.pg_sleep" or "pg_sleep"); deduplicated, sorted.
    pub functions: Vec<String>,
    /// Number of statements in the string.
    pub statements: usize,
    /// Why it is Opaque (parse error text, "DO block", "too long to classify", ...).
    pub note: Option<String>,
    /// Column references inside a SELECT list or RETURNING list at any depth, lower-case and
    /// dotted as written (`email`, `c.email`, `c.*`, `*`, or `c` for a whole row): what the
    /// statement's output may be computed from, for masking expression columns.
    pub output_columns: Vec<String>,
    /// The column references of [`Classified::output_columns`] that feed a target list rather
    /// than a RETURNING list (outside a view definition): what a write or DDL statement may copy
    /// into a table.
    pub source_columns: Vec<String>,
    /// The column references on the right of an UPDATE's SET list.
    pub set_columns: Vec<String>,
    /// Settings the statement changes (SET, RESET, `set_config`), lower-case; `*` for RESET
    /// ALL, DISCARD ALL or a name that is not a constant.
    pub settings: Vec<String>,
}

impl Classified {
    pub fn opaque(note: impl Into<String>) -> Self {
        Classified {
            class: Class::Opaque,
            tables: Vec::new(),
            functions: Vec::new(),
            statements: 0,
            note: Some(note.into()),
            output_columns: Vec::new(),
            source_columns: Vec::new(),
            set_columns: Vec::new(),
            settings: Vec::new(),
        }
    }
}

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
        settings: walker.settings.into_iter().collect(),
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
const DISCARD_STMT: &str = node!(DiscardStmt);
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

/// The setting a SET/RESET changes, lower-case; `*` for RESET ALL and SET TRANSACTION-like
/// forms that name no single setting.
fn changed_setting(f: &Frame) -> String {
    use protobuf::VariableSetKind as K;
    let kind = f
        .int("kind")
        .and_then(|k| i32::try_from(k).ok())
        .and_then(|k| K::try_from(k).ok());
    match (kind, f.str("name").filter(|n| !n.is_empty())) {
        (Some(K::VarResetAll), _) | (_, None) => "*".to_owned(),
        (_, Some(n)) => n.to_ascii_lowercase(),
    }
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
    settings: BTreeSet<String>,
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
        match f.kind {
            VARIABLE_SET_STMT => {
                self.settings.insert(changed_setting(&f));
            }
            DISCARD_STMT if f.int("target") == Some(protobuf::DiscardMode::DiscardAll as i64) => {
                self.settings.insert("*".to_owned());
            }
            _ => {}
        }
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
                            self.settings
                                .insert(setting.clone().unwrap_or_else(|| "*".to_owned()));
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

#[derive(Debug)]
struct WalkError(String);

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WalkError {}

impl ser::Error for WalkError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WalkError(msg.to_string())
    }
}

type WalkResult = Result<(), WalkError>;

impl<'a> Serializer for &'a mut Walker {
    type Ok = ();
    type Error = WalkError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = StructWalk<'a>;
    type SerializeStructVariant = StructWalk<'a>;

    fn serialize_bool(self, v: bool) -> WalkResult {
        self.scalar(Scalar::Bool(v));
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> WalkResult {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> WalkResult {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> WalkResult {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> WalkResult {
        self.scalar(Scalar::Int(v));
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> WalkResult {
        self.serialize_i64(v.into())
    }
    fn serialize_u16(self, v: u16) -> WalkResult {
        self.serialize_i64(v.into())
    }
    fn serialize_u32(self, v: u32) -> WalkResult {
        self.serialize_i64(v.into())
    }
    fn serialize_u64(self, v: u64) -> WalkResult {
        self.serialize_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }
    fn serialize_f32(self, _v: f32) -> WalkResult {
        Ok(())
    }
    fn serialize_f64(self, _v: f64) -> WalkResult {
        Ok(())
    }
    fn serialize_char(self, v: char) -> WalkResult {
        self.scalar(Scalar::Str(v.to_string()));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> WalkResult {
        self.scalar(Scalar::Str(v.to_owned()));
        Ok(())
    }
    fn serialize_bytes(self, _v: &[u8]) -> WalkResult {
        Ok(())
    }
    fn serialize_none(self) -> WalkResult {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> WalkResult {
        self.mark_present();
        value.serialize(self)
    }
    fn serialize_unit(self) -> WalkResult {
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> WalkResult {
        Ok(())
    }
    fn serialize_unit_variant(self, _name: &'static str, _i: u32, _v: &'static str) -> WalkResult {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> WalkResult {
        value.serialize(self)
    }
    // The `Node` oneof: the variant's payload is a struct that names its own type.
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _i: u32,
        _variant: &'static str,
        value: &T,
    ) -> WalkResult {
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, WalkError> {
        if len != Some(0) {
            self.mark_present();
        }
        Ok(self)
    }
    fn serialize_tuple(self, len: usize) -> Result<Self, WalkError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Self, WalkError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _i: u32,
        _variant: &'static str,
        len: usize,
    ) -> Result<Self, WalkError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self, WalkError> {
        self.serialize_seq(len)
    }
    fn serialize_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<StructWalk<'a>, WalkError> {
        // `Node` is only the oneof wrapper around the real node: no frame of its own, so the
        // real node's parent is the node that holds the field.
        let framed = name != NODE;
        if framed {
            self.enter(name);
        }
        Ok(StructWalk { w: self, framed })
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<StructWalk<'a>, WalkError> {
        self.enter(variant);
        Ok(StructWalk {
            w: self,
            framed: true,
        })
    }
}

impl ser::SerializeSeq for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> WalkResult {
        value.serialize(&mut **self)
    }
    fn end(self) -> WalkResult {
        Ok(())
    }
}

impl ser::SerializeTuple for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> WalkResult {
        value.serialize(&mut **self)
    }
    fn end(self) -> WalkResult {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> WalkResult {
        value.serialize(&mut **self)
    }
    fn end(self) -> WalkResult {
        Ok(())
    }
}

impl ser::SerializeTupleVariant for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> WalkResult {
        value.serialize(&mut **self)
    }
    fn end(self) -> WalkResult {
        Ok(())
    }
}

impl ser::SerializeMap for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> WalkResult {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> WalkResult {
        value.serialize(&mut **self)
    }
    fn end(self) -> WalkResult {
        Ok(())
    }
}

struct StructWalk<'a> {
    w: &'a mut Walker,
    framed: bool,
}

impl StructWalk<'_> {
    fn field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> WalkResult {
        if self.framed {
            if let Some(top) = self.w.stack.last_mut() {
                top.field = key;
            }
        }
        value.serialize(&mut *self.w)
    }

    fn finish(self) -> WalkResult {
        if self.framed {
            self.w.leave();
        }
        Ok(())
    }
}

impl ser::SerializeStruct for StructWalk<'_> {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> WalkResult {
        self.field(key, value)
    }
    fn end(self) -> WalkResult {
        self.finish()
    }
}

impl ser::SerializeStructVariant for StructWalk<'_> {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> WalkResult {
        self.field(key, value)
    }
    fn end(self) -> WalkResult {
        self.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(sql: &str) -> Class {
        classify(sql).class
    }

    fn tables(sql: &str) -> Vec<String> {
        classify(sql)
            .tables
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Asserts the class of each query, naming the query on failure.
    fn assert_classes(expected: Class, queries: &[&str]) {
        for q in queries {
            let c = classify(q);
            assert_eq!(c.class, expected, "{q}: {c:?}");
            if expected != Class::Opaque {
                assert_eq!(c.note, None, "{q}");
            }
        }
    }

    #[test]
    fn read() {
        assert_classes(
            Class::Read,
            &[
                "SELECT * FROM t",
                "VALUES (1), (2)",
                "TABLE t",
                "SELECT a FROM t UNION SELECT b FROM u",
                "SHOW search_path",
                "BEGIN",
                "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                "COMMIT",
                "ROLLBACK",
                "SAVEPOINT s",
                "RELEASE SAVEPOINT s",
                "ROLLBACK TO SAVEPOINT s",
                "SET search_path = a",
                "SET LOCAL statement_timeout = '5s'",
                "RESET search_path",
                "RESET ALL",
                "SET TRANSACTION READ ONLY",
                "SET CONSTRAINTS ALL DEFERRED",
                "DISCARD ALL",
                "DEALLOCATE p",
                "DECLARE c CURSOR FOR SELECT * FROM t",
                "FETCH 10 FROM c",
                "MOVE NEXT IN c",
                "CLOSE c",
                "LISTEN chan",
                "UNLISTEN *",
                "COPY t TO STDOUT",
                "COPY (SELECT 1) TO STDOUT",
                "EXPLAIN SELECT * FROM t",
                "PREPARE p AS SELECT * FROM t WHERE id = $1",
                "SELECT pg_advisory_lock(1)",
                "SELECT pg_sleep(1)",
                "SELECT current_setting('work_mem')",
            ],
        );
    }

    #[test]
    fn write() {
        assert_classes(
            Class::Write,
            &[
                "INSERT INTO t VALUES (1)",
                "INSERT INTO t SELECT * FROM u ON CONFLICT (id) DO UPDATE SET a = 1",
                "UPDATE t SET a = 1 WHERE id = 1",
                "DELETE FROM t WHERE id = 1",
                "DELETE FROM t WHERE CURRENT OF c",
                "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a",
                "MERGE INTO t USING s ON true WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
                "MERGE INTO t USING s ON true WHEN MATCHED AND t.id = 3 THEN DELETE",
                "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE AND t.a > 1 THEN DELETE",
                "UPDATE t SET a = 1 WHERE id = 1 AND true",
                "UPDATE t SET a = 1 WHERE NOT (id = 1)",
                "DELETE FROM t WHERE id = 1 OR id = 2",
                "DELETE FROM t WHERE id = $1",
                "DELETE FROM t WHERE id IN (SELECT id FROM u)",
                "COPY t FROM STDIN",
                "COPY t (a, b) FROM STDIN WITH (FORMAT csv)",
                "NOTIFY chan, 'x'",
                "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
                "SELECT * FROM t FOR UPDATE",
                "SELECT * FROM t FOR KEY SHARE SKIP LOCKED",
                "SELECT nextval('s')",
                "SELECT setval('s', 1)",
                "SELECT pg_notify('chan', 'x')",
                "DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE",
                "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
                "SELECT * FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)",
                "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            ],
        );
    }

    #[test]
    fn write_unbounded() {
        assert_classes(
            Class::WriteUnbounded,
            &[
                "DELETE FROM t",
                "UPDATE t SET a = 1",
                "UPDATE t SET a = u.a FROM u",
                "DELETE FROM t USING u",
                "TRUNCATE t",
                "TRUNCATE TABLE a, b CASCADE",
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                "WITH a AS (SELECT 1), b AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM b",
                "EXPLAIN ANALYZE DELETE FROM t",
                "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1",
                "EXPLAIN (ANALYZE true) DELETE FROM t",
                "PREPARE p AS DELETE FROM t",
                "COPY (DELETE FROM t RETURNING *) TO STDOUT",
                // One bounded and one unbounded write: the higher wins.
                "DELETE FROM t WHERE id = 1; DELETE FROM u",
                // A condition that reads no column holds for every row or none.
                "DELETE FROM t WHERE true",
                "UPDATE t SET a = 1 WHERE 1 = 1",
                "DELETE FROM t WHERE 'a' = 'a'",
                "DELETE FROM t WHERE NOT false",
                "DELETE FROM t WHERE $1",
                "DELETE FROM t WHERE random() < 2",
                "DELETE FROM t WHERE (SELECT true)",
                "DELETE FROM t WHERE EXISTS (SELECT 1)",
                "UPDATE t SET a = 1 WHERE true::bool",
                "DELETE FROM t WHERE id = 1 OR true",
                "DELETE FROM t WHERE id = id",
                "DELETE FROM t WHERE t.a >= t.a",
                "DELETE FROM t WHERE a IS NOT DISTINCT FROM a",
                "WITH d AS (DELETE FROM t WHERE 1 = 1 RETURNING *) SELECT * FROM d",
                // MERGE: like the UPDATE or DELETE it can do.
                "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
                "MERGE INTO t USING s ON true WHEN MATCHED THEN UPDATE SET a = 1",
                "MERGE INTO t USING (SELECT 1) s ON 1 = 1 WHEN MATCHED THEN DELETE",
                "MERGE INTO t USING s ON t.id = t.id WHEN MATCHED THEN DELETE",
                "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE",
                "MERGE INTO t USING s ON true WHEN MATCHED AND true THEN UPDATE SET a = 1 \
                 WHEN NOT MATCHED THEN INSERT VALUES (1)",
            ],
        );
    }

    #[test]
    fn ddl() {
        assert_classes(
            Class::Ddl,
            &[
                "CREATE TABLE t (id int PRIMARY KEY)",
                "CREATE TEMP TABLE t (id int)",
                "CREATE INDEX i ON t (a)",
                "CREATE UNIQUE INDEX CONCURRENTLY i ON t (a) WHERE a > 0",
                "ALTER TABLE t ADD COLUMN b text",
                "ALTER TABLE t OWNER TO bob",
                "ALTER TABLE t REPLICA IDENTITY FULL",
                "DROP TABLE t",
                "DROP INDEX i",
                "DROP SCHEMA s CASCADE",
                "DROP FUNCTION f(int)",
                "CREATE VIEW v AS SELECT * FROM t",
                "CREATE MATERIALIZED VIEW m AS SELECT * FROM t",
                "REFRESH MATERIALIZED VIEW m",
                "CREATE SCHEMA s",
                "CREATE SEQUENCE s",
                "CREATE TYPE mood AS ENUM ('a', 'b')",
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                "CREATE FUNCTION f() RETURNS int RETURN 1",
                "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
                "COMMENT ON TABLE t IS 'x'",
                "SELECT 1 INTO newt",
                "SELECT * INTO newt FROM t",
                "CREATE TABLE t2 AS SELECT * FROM t",
                "ALTER SEQUENCE s RESTART",
                "ALTER SCHEMA s RENAME TO s2",
                "ALTER FUNCTION f() OWNER TO bob",
                "ALTER TABLE t SET SCHEMA s",
                "EXPLAIN ANALYZE CREATE TABLE t2 AS SELECT 1",
                // The CREATE outranks the write it contains.
                "SELECT 1; DROP TABLE t; DELETE FROM u",
            ],
        );
    }

    #[test]
    fn dcl() {
        assert_classes(
            Class::Dcl,
            &[
                "GRANT SELECT ON t TO x",
                "GRANT ALL ON ALL TABLES IN SCHEMA public TO x",
                "REVOKE INSERT ON t FROM x",
                "GRANT admin TO bob",
                "CREATE ROLE bob LOGIN PASSWORD 'x'",
                "CREATE USER bob",
                "CREATE GROUP g",
                "ALTER ROLE bob SUPERUSER",
                "ALTER USER bob SET search_path = a",
                "ALTER ROLE bob RENAME TO rob",
                "DROP ROLE bob",
                "DROP USER IF EXISTS bob",
                "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO x",
                "SET ROLE x",
                "SET LOCAL ROLE x",
                "RESET ROLE",
                "SET role = 'x'",
                "SET SESSION AUTHORIZATION x",
                "SET SESSION AUTHORIZATION DEFAULT",
                "REASSIGN OWNED BY a TO b",
                "DROP OWNED BY a",
                "SECURITY LABEL ON TABLE t IS 'x'",
                "CREATE POLICY p ON t USING (owner = current_user)",
                "DROP POLICY p ON t",
                "ALTER TABLE t DISABLE ROW LEVEL SECURITY",
                "CREATE SCHEMA s CREATE TABLE t (a int) GRANT SELECT ON t TO x",
            ],
        );
    }

    #[test]
    fn admin() {
        assert_classes(
            Class::Admin,
            &[
                "VACUUM",
                "VACUUM FULL t",
                "ANALYZE t",
                "CLUSTER t USING i",
                "REINDEX TABLE t",
                "CHECKPOINT",
                "ALTER SYSTEM SET work_mem = '1GB'",
                "LOAD 'auto_explain'",
                "CREATE EXTENSION dblink",
                "ALTER EXTENSION e UPDATE",
                "DROP EXTENSION e",
                "CREATE DATABASE d",
                "ALTER DATABASE d SET work_mem = '1MB'",
                "ALTER DATABASE d OWNER TO bob",
                "ALTER DATABASE d RENAME TO d2",
                "DROP DATABASE d",
                "CREATE TABLESPACE ts LOCATION '/x'",
                "DROP TABLESPACE ts",
                "CREATE PUBLICATION p FOR ALL TABLES",
                "DROP PUBLICATION p",
                "CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p",
                "DROP SUBSCRIPTION s",
                "CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()",
                "CREATE LANGUAGE plperlu",
                "PREPARE TRANSACTION 'x'",
                "COMMIT PREPARED 'x'",
                "ROLLBACK PREPARED 'x'",
                "COPY t TO '/tmp/x'",
                "COPY t FROM '/etc/passwd'",
                "COPY t FROM PROGRAM 'id'",
                "COPY (SELECT 1) TO PROGRAM 'sh'",
                "SELECT pg_terminate_backend(1)",
                "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_stat_activity",
                "SELECT pg_cancel_backend(1)",
                "SELECT pg_reload_conf()",
                "SELECT pg_read_file('/etc/passwd')",
                "SELECT * FROM pg_ls_dir('.')",
                "SELECT lo_import('/etc/passwd')",
                "SELECT * FROM dblink('host=x', 'SELECT 1') AS t(a int)",
                "SELECT public.dblink_exec('DROP TABLE t')",
                "SELECT pg_switch_wal()",
                "SET log_statement = 'none'",
                "SET session_replication_role = replica",
                // Privileged calls hidden in expressions the top-level type says nothing about.
                "SELECT ARRAY[pg_terminate_backend(1)]",
                "SELECT coalesce(x, 1) FROM t WHERE a = ANY(ARRAY[pg_cancel_backend(2)])",
                "SELECT f(a => pg_reload_conf())",
                "SELECT (pg_stat_file('x')).size",
                "SELECT * FROM t WHERE EXISTS (SELECT 1 WHERE pg_terminate_backend(1))",
                "INSERT INTO t VALUES (pg_read_file('/etc/passwd'))",
                "UPDATE t SET a = pg_read_file('x') WHERE id = 1",
                "CREATE TABLE t (a text DEFAULT pg_read_file('x'))",
                "CREATE VIEW v AS SELECT pg_read_file('x')",
                "WITH x AS (SELECT pg_terminate_backend(1)) SELECT 1",
                "SELECT CASE WHEN true THEN pg_promote() END",
                "SELECT 1; SELECT pg_rotate_logfile()",
                "EXPLAIN ANALYZE SELECT pg_terminate_backend(1)",
            ],
        );
    }

    #[test]
    fn opaque() {
        let cases: &[(&str, &str)] = &[
            ("DO $$ BEGIN END $$", "DO block"),
            (
                "DO LANGUAGE plpgsql $$ BEGIN DELETE FROM t; END $$",
                "DO block",
            ),
            ("CALL p(1)", "CALL"),
            ("EXECUTE p(1)", "EXECUTE"),
            ("CREATE TABLE t2 AS EXECUTE p", "EXECUTE"),
            ("SELEC 1", "syntax error"),
            ("SELECT 1; SELEC 2", "syntax error"),
            ("SELECT * FROM", "syntax error"),
            ("SELECT 'abc", "unterminated"),
            ("SELECT 1\0", "nul"),
            (
                "SELECT query_to_xml('SELECT * FROM secrets', true, true, '')",
                "query_to_xml",
            ),
            (
                "SELECT table_to_xml('secrets', true, true, '')",
                "table_to_xml",
            ),
            ("SELECT 1; CALL p()", "CALL"),
        ];
        for (q, note) in cases {
            let c = classify(q);
            assert_eq!(c.class, Class::Opaque, "{q}: {c:?}");
            let got = c.note.unwrap_or_default().to_lowercase();
            assert!(got.contains(&note.to_lowercase()), "{q}: note {got:?}");
        }
    }

    #[test]
    fn unknown_statement_types_are_opaque() {
        // Nothing in SQL produces these in a raw parse tree, so the fail-closed default arm is
        // exercised directly.
        for kind in ["SetOperationStmt", "PlAssignStmt", "SomeFutureStmt"] {
            let f = Frame {
                kind,
                ..Frame::default()
            };
            let (class, note) = statement_class(&f).unwrap_or((Class::Read, None));
            assert_eq!(class, Class::Opaque, "{kind}");
            assert!(note.is_some_and(|n| n.contains(kind)), "{kind}");
        }
    }

    #[test]
    fn syntax_error_note_carries_parser_text() {
        let c = classify("SELEC 1");
        assert_eq!(c.class, Class::Opaque);
        assert_eq!(c.statements, 0);
        let note = c.note.unwrap_or_default();
        assert!(note.contains("syntax error at or near \"SELEC\""), "{note}");
        // The parser quotes the rest of the input; the note stays short.
        let c = classify(&format!("SELECT 'é{}", "x".repeat(10_000)));
        assert_eq!(c.class, Class::Opaque);
        let note = c.note.unwrap_or_default();
        assert!(note.contains("unterminated"), "{note}");
        assert!(note.len() < 320, "{}", note.len());
    }

    #[test]
    fn empty_is_read_with_no_statements() {
        for q in ["", "   ", "-- just a comment", "/* c */", ";", " ; ; "] {
            let c = classify(q);
            assert_eq!(c.class, Class::Read, "{q:?}");
            assert_eq!(c.statements, 0, "{q:?}");
            assert!(c.tables.is_empty() && c.functions.is_empty() && c.note.is_none());
        }
    }

    #[test]
    fn multi_statement_takes_the_highest_and_counts() {
        let c = classify("SELECT 1; DROP TABLE t");
        assert_eq!(c.class, Class::Ddl);
        assert_eq!(c.statements, 2);
        assert_eq!(tables("SELECT 1; DROP TABLE t"), ["t"]);
        assert_eq!(classify("SELECT 1; SELECT 2; SELECT 3").statements, 3);
        assert_eq!(class("SELECT 1; SELECT 2"), Class::Read);
    }

    #[test]
    fn cte_hidden_delete() {
        let q = "WITH d AS (DELETE FROM audit.events RETURNING *) SELECT count(*) FROM d";
        let c = classify(q);
        assert_eq!(c.class, Class::WriteUnbounded);
        // The DELETE's table is listed; the CTE name is not a relation.
        assert_eq!(tables(q), ["audit.events"]);
        let q = "WITH d AS (DELETE FROM events WHERE id = 1 RETURNING *) SELECT * FROM d";
        assert_eq!(class(q), Class::Write);
        assert_eq!(tables(q), ["events"]);
    }

    #[test]
    fn explain() {
        assert_eq!(class("EXPLAIN DELETE FROM t"), Class::Read);
        assert_eq!(
            class("EXPLAIN ANALYZE DELETE FROM t"),
            Class::WriteUnbounded
        );
        assert_eq!(
            class("EXPLAIN ANALYSE DELETE FROM t"),
            Class::WriteUnbounded
        );
        assert_eq!(class("EXPLAIN (ANALYZE false) DELETE FROM t"), Class::Read);
        assert_eq!(class("EXPLAIN (ANALYZE off) DELETE FROM t"), Class::Read);
        assert_eq!(
            class("EXPLAIN (ANALYZE 1) DELETE FROM t"),
            Class::WriteUnbounded
        );
        assert_eq!(class("EXPLAIN (COSTS off) DELETE FROM t"), Class::Read);
        // Planned, not run.
        assert_eq!(class("EXPLAIN SELECT pg_terminate_backend(1)"), Class::Read);
        assert_eq!(class("EXPLAIN EXECUTE p"), Class::Read);
        // Still lists what it is about.
        assert_eq!(tables("EXPLAIN DELETE FROM s.t"), ["s.t"]);
    }

    #[test]
    fn copy() {
        assert_eq!(class("COPY t FROM STDIN"), Class::Write);
        assert_eq!(class("COPY t TO '/tmp/x'"), Class::Admin);
        assert_eq!(class("COPY (SELECT 1) TO STDOUT"), Class::Read);
        assert_eq!(class("COPY t TO STDOUT"), Class::Read);
        assert_eq!(
            class("COPY (SELECT pg_read_file('x')) TO STDOUT"),
            Class::Admin
        );
        assert_eq!(tables("COPY s.t FROM STDIN"), ["s.t"]);
    }

    #[test]
    fn tables_are_listed_with_schema_deduplicated_and_sorted() {
        let q = "SELECT * FROM public.users u JOIN orders o ON o.user_id = u.id";
        assert_eq!(class(q), Class::Read);
        let c = classify(q);
        assert_eq!(
            c.tables,
            [
                TableRef {
                    schema: None,
                    name: "orders".into()
                },
                TableRef {
                    schema: Some("public".into()),
                    name: "users".into()
                },
            ]
        );
        assert_eq!(
            tables(
                "SELECT * FROM b, a, b WHERE x IN (SELECT y FROM c) AND EXISTS (SELECT 1 FROM a)"
            ),
            ["a", "b", "c"]
        );
        assert_eq!(tables("INSERT INTO t SELECT * FROM s.u"), ["t", "s.u"]);
        assert_eq!(
            tables("UPDATE t SET a = u.a FROM u WHERE t.id = u.id"),
            ["t", "u"]
        );
        assert_eq!(
            tables("DELETE FROM t USING u WHERE t.id = u.id"),
            ["t", "u"]
        );
        assert_eq!(
            tables("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE"),
            ["s", "t"]
        );
        assert_eq!(tables("DROP TABLE a.b, c"), ["c", "a.b"]);
        assert_eq!(tables("DROP TRIGGER tr ON s.t"), ["s.t"]);
        assert_eq!(tables("COMMENT ON COLUMN s.t.c IS 'x'"), ["s.t"]);
        assert_eq!(tables("TRUNCATE a, s.b"), ["a", "s.b"]);
        assert_eq!(tables("GRANT SELECT ON s.t TO x"), ["s.t"]);
        assert_eq!(tables("LOCK TABLE t"), ["t"]);
        assert_eq!(tables("CREATE INDEX i ON s.t (a)"), ["s.t"]);
        assert_eq!(
            tables("CREATE TABLE c (id int REFERENCES p (id))"),
            ["c", "p"]
        );
        assert_eq!(tables("SELECT 1 INTO newt"), ["newt"]);
        assert_eq!(
            tables("SELECT * FROM a JOIN (b JOIN c ON true) ON true"),
            ["a", "b", "c"]
        );
        assert_eq!(tables("SELECT * FROM mydb.s.t"), ["s.t"]);
        assert_eq!(
            tables("SELECT \"Mixed\" FROM \"Weird Name\""),
            ["Weird Name"]
        );
        // A row-lock target names a FROM item (here an alias), not a relation.
        assert_eq!(tables("SELECT * FROM t x FOR UPDATE OF x"), ["t"]);
    }

    #[test]
    fn cte_names_are_scoped() {
        assert_eq!(tables("WITH x AS (SELECT * FROM t) SELECT * FROM x"), ["t"]);
        // A CTE name shadows a relation only where it is visible.
        assert_eq!(
            tables("SELECT * FROM x, (WITH x AS (SELECT 1) SELECT * FROM x) s"),
            ["x"]
        );
        // A non-recursive CTE's own name inside its body is the relation.
        assert_eq!(
            tables("WITH users AS (SELECT * FROM users WHERE active) SELECT * FROM users"),
            ["users"]
        );
        // ...and later CTEs see earlier ones, not the other way round.
        assert_eq!(
            tables("WITH a AS (SELECT * FROM b), b AS (SELECT * FROM a) SELECT * FROM b"),
            ["b"]
        );
        // RECURSIVE: the name is the CTE inside its own body.
        assert_eq!(
            tables(
                "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) \
                 SELECT * FROM r"
            ),
            Vec::<String>::new()
        );
        // Nested WITH sees the outer CTE.
        assert_eq!(
            tables("WITH o AS (SELECT 1) SELECT * FROM (WITH i AS (SELECT * FROM o) SELECT * FROM i) s"),
            Vec::<String>::new()
        );
        // A DML target is always a relation, even if a CTE has that name.
        assert_eq!(
            tables("WITH t AS (SELECT 1 AS a) INSERT INTO t SELECT a FROM t"),
            ["t"]
        );
        assert_eq!(tables("WITH t AS (SELECT 1) SELECT * INTO t FROM t"), ["t"]);
        // Set operations: the WITH sits on the outer node, the references in its arms.
        assert_eq!(
            tables("WITH x AS (SELECT * FROM t) SELECT * FROM x UNION ALL SELECT * FROM x"),
            ["t"]
        );
        assert_eq!(
            tables("WITH x AS (SELECT * FROM t) INSERT INTO u SELECT * FROM x"),
            ["t", "u"]
        );
        // A schema-qualified name is never a CTE.
        assert_eq!(tables("WITH t AS (SELECT 1) SELECT * FROM s.t, t"), ["s.t"]);
    }

    #[test]
    fn functions_are_listed_lower_case_and_qualified() {
        let c = classify(
            "SELECT pg_catalog.PG_SLEEP(1), lower(a), LOWER(b), now() FROM t WHERE f(g(1))",
        );
        assert_eq!(c.class, Class::Read);
        assert_eq!(
            c.functions,
            ["f", "g", "lower", "now", "pg_catalog.pg_sleep"]
        );
        assert_eq!(classify("CALL s.p()").functions, ["s.p"]);
        assert_eq!(
            classify("SELECT count(*) OVER (PARTITION BY nextval('s'))").functions,
            ["count", "nextval"]
        );
    }

    #[test]
    fn over_long_is_opaque_without_parsing() {
        let q = format!("SELECT 1 {}", " ".repeat(MAX_QUERY_LEN));
        let c = classify(&q);
        assert_eq!(c.class, Class::Opaque);
        assert!(c.note.unwrap_or_default().contains("too long"));
        // Exactly at the limit it is still parsed.
        let q = format!("SELECT 1{}", " ".repeat(MAX_QUERY_LEN - "SELECT 1".len()));
        assert_eq!(q.len(), MAX_QUERY_LEN);
        assert_eq!(class(&q), Class::Read);
    }

    #[test]
    fn deep_nesting_does_not_panic() {
        for n in [50, 200, 2000] {
            let q = format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n));
            let _ = classify(&q);
            let q = format!("SELECT 1{}", " + 1".repeat(n));
            let _ = classify(&q);
            let q = format!("SELECT {}1{}", "ARRAY[".repeat(n), "]".repeat(n));
            let _ = classify(&q);
            let q = format!(
                "SELECT * FROM t WHERE a IN {}1{}",
                "(SELECT ".repeat(n),
                ")".repeat(n)
            );
            let c = classify(&q);
            // Either understood or refused, never wrongly harmless with a hidden write.
            assert!(matches!(c.class, Class::Read | Class::Opaque), "{n}");
        }
        let c = classify(&format!("SELECT 1{}", " + 1".repeat(60)));
        assert_eq!(c.class, Class::Opaque);
        assert_eq!(
            c.note.as_deref(),
            Some("parse tree too deeply nested to classify")
        );
        // A hidden write below a deep nest is never Read.
        let q = format!(
            "SELECT {}(SELECT count(*) FROM (DELETE FROM t RETURNING 1) d){}",
            "(".repeat(300),
            ")".repeat(300)
        );
        assert_ne!(class(&q), Class::Read);
    }

    #[test]
    fn cache_returns_the_same_arc() {
        let cache = Classifier::new(2);
        let a = cache.classify("DELETE FROM t");
        let b = cache.classify("DELETE FROM t");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.class, Class::WriteUnbounded);
        let c = cache.classify("SELECT 1");
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.class, Class::Read);
        // Capacity 2: a third text evicts the least recently used ("DELETE FROM t").
        let _ = cache.classify("SELECT 2");
        let a2 = cache.classify("DELETE FROM t");
        assert!(!Arc::ptr_eq(&a, &a2));
        assert_eq!(a2.class, Class::WriteUnbounded);
        // Over-long texts are not cached.
        let long = "x".repeat(MAX_QUERY_LEN + 1);
        let l1 = cache.classify(&long);
        let l2 = cache.classify(&long);
        assert_eq!(l1.class, Class::Opaque);
        assert!(!Arc::ptr_eq(&l1, &l2));
        // Capacity 0 still works (one entry).
        let tiny = Classifier::new(0);
        assert!(Arc::ptr_eq(
            &tiny.classify("SELECT 1"),
            &tiny.classify("SELECT 1")
        ));
    }

    #[test]
    fn class_names_match_serde() {
        let mut seen = BTreeSet::new();
        for c in Class::ALL {
            let json = serde_json::to_string(&c).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            let back: Class = serde_json::from_str(&json).unwrap_or(Class::Read);
            assert_eq!(back, c);
            seen.insert(c);
        }
        assert_eq!(seen.len(), 7);
        // ALL is in privilege order.
        assert!(Class::ALL.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Class::WriteUnbounded.as_str(), "write_unbounded");
    }

    #[test]
    fn table_ref_display() {
        let t = TableRef {
            schema: Some("public".into()),
            name: "users".into(),
        };
        assert_eq!(t.to_string(), "public.users");
        let t = TableRef {
            schema: None,
            name: "users".into(),
        };
        assert_eq!(t.to_string(), "users");
    }

    /// Settings that change how the server reads later SQL text are opaque, however they are
    /// changed: otherwise `SET standard_conforming_strings = off` or an SJIS client encoding
    /// would let the next string hide a statement the gateway's parser cannot see.
    #[test]
    fn settings_that_change_the_lexer_are_opaque() {
        for sql in [
            "SET standard_conforming_strings = off",
            "SET SESSION standard_conforming_strings TO off",
            "SET LOCAL standard_conforming_strings = off",
            "SET NAMES 'SJIS'",
            "SET client_encoding = 'GBK'",
            "RESET client_encoding",
            "SET backslash_quote = on",
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            "SELECT set_config('role', 'admin', false)",
        ] {
            assert_eq!(classify(sql).class, Class::Opaque, "{sql}");
        }
        assert_eq!(classify("SET search_path = app").class, Class::Read);
    }

    /// asyncpg's type introspection runs this under every policy; a harmless setting changed
    /// with constants is a read, anything else set_config does stays Opaque.
    #[test]
    fn set_config_is_judged_by_setting_name() {
        let c = classify(
            "SELECT current_setting('jit') AS cur, set_config('jit', 'off', false) AS new",
        );
        assert_eq!(c.class, Class::Read, "{c:?}");
        assert_eq!(c.settings, ["jit"]);
        for sql in [
            "SELECT set_config('statement_timeout', '5s', true)",
            "SELECT pg_catalog.set_config('application_name', 'x', false)",
            "SELECT set_config('jit', $1, false)",
            "SELECT set_config('JIT', 'off', false)",
        ] {
            assert_eq!(classify(sql).class, Class::Read, "{sql}");
        }
        for sql in [
            "SELECT set_config('search_path', 's30, public', false)",
            "SELECT set_config('role', 'admin', false)",
            "SELECT set_config('session_authorization', 'admin', false)",
            "SELECT set_config('client_encoding', 'SJIS', false)",
            "SELECT set_config('row_security', 'off', false)",
            // A value from a table would sit in the setting, unmasked, for current_setting.
            "SELECT set_config('application_name', email, false) FROM customers",
            "SELECT set_config(name, 'x', false) FROM settings_to_change",
            "SELECT set_config('jit'::text, 'off', false)",
            "SELECT set_config('jit', 'off' || '', false)",
            "SELECT set_config('jit', NULL, false)",
            "SELECT set_config($1, 'off', false)",
            "SELECT set_config(setting_name => 'jit', new_value => 'off', is_local => false)",
        ] {
            assert_eq!(classify(sql).class, Class::Opaque, "{sql}");
        }
        assert_eq!(
            classify("SELECT set_config('application_name', email, false) FROM customers")
                .source_columns,
            ["email"]
        );
    }

    #[test]
    fn changed_settings_are_listed() {
        assert_eq!(classify("SET search_path = a, b").settings, ["search_path"]);
        assert_eq!(
            classify("SET LOCAL Search_Path TO a").settings,
            ["search_path"]
        );
        assert_eq!(classify("RESET search_path").settings, ["search_path"]);
        assert_eq!(classify("RESET ALL").settings, ["*"]);
        assert_eq!(classify("DISCARD ALL").settings, ["*"]);
        assert!(classify("DISCARD PLANS").settings.is_empty());
        assert_eq!(classify("SET TIME ZONE 'UTC'").settings, ["timezone"]);
        assert_eq!(
            classify("SELECT set_config(x, 'a', false) FROM t").settings,
            ["*"]
        );
        assert_eq!(
            classify("SET jit = off; SELECT set_config('search_path', 'a', false)").settings,
            ["jit", "search_path"]
        );
        assert!(classify("SELECT current_setting('search_path')")
            .settings
            .is_empty());
    }
}

/// In [`Classified::output_columns`]: a FETCH, whose rows come from a cursor's query.
pub const CURSOR_OUTPUT: &str = "<cursor>";

#[cfg(test)]
mod output_column_tests {
    use super::classify;

    #[test]
    fn output_and_source_columns() {
        let c = classify(
            "SELECT c.id, lower(email), row_to_json(c), c.* FROM customers c WHERE ssn = '1'",
        );
        assert_eq!(c.output_columns, ["c", "c.*", "c.id", "email"]);
        let c = classify("SELECT count(*) FROM customers WHERE email LIKE '%x'");
        assert!(c.output_columns.is_empty(), "{:?}", c.output_columns);
        let c = classify("SELECT * FROM customers");
        assert_eq!(c.output_columns, ["*"]);
        // The SET list is a target list too: harmless, it outputs nothing without RETURNING.
        let c = classify("UPDATE customers SET name = name RETURNING email");
        assert_eq!(c.output_columns, ["email", "name"]);
        assert!(c.source_columns.is_empty());
        assert_eq!(c.set_columns, ["name"]);
        let c = classify("INSERT INTO t SELECT email FROM customers");
        assert_eq!(c.source_columns, ["email"]);
        let c = classify("CREATE VIEW v AS SELECT email FROM customers");
        assert!(c.source_columns.is_empty());
        let c = classify("CREATE TABLE t AS SELECT email FROM customers");
        assert_eq!(c.source_columns, ["email"]);
        let c = classify("SELECT 1 FROM customers WHERE pg_notify('ch', email) IS NULL");
        assert_eq!(c.source_columns, ["email"]);
        let c = classify("SELECT 1 FROM customers WHERE lower(email) = 'x'");
        assert!(c.source_columns.is_empty());
        let c = classify("SELECT x FROM (SELECT lower(\"Email\") AS x FROM customers) s");
        assert_eq!(c.output_columns, ["email", "x"]);
        assert_eq!(
            classify("FETCH 10 FROM c").output_columns,
            [super::CURSOR_OUTPUT]
        );
        assert!(classify("MOVE 10 IN c").output_columns.is_empty());
    }
}
