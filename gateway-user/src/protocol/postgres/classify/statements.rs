//! What a statement node does by itself: its class from the node type and, for the generic
//! statements (DROP, RENAME, SET, COPY, EXPLAIN, transactions), from its fields. The walker
//! combines it with the classes of the nodes below.

use pg_query::protobuf;

use super::{
    frame::{Frame, Scalar, Verdict},
    nodes::*,
    predicate, settings, Class,
};

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

pub(super) fn statement_class(f: &Frame) -> Option<(Class, Option<String>)> {
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

/// An ALTER TABLE subcommand adds Dcl when it turns row-level security on or off: that changes
/// who sees which rows.
pub(super) fn alter_table_cmd(f: &Frame, verdict: &mut Verdict) {
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
