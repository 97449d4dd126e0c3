//! Node type names and field names, as serde reports them while the parse tree streams into the
//! walker.
//!
//! The walker identifies nodes by the type name serde reports. Each name is written through
//! `node!`, which also names the pg_query type, so a misspelt name (or one renamed by a future
//! pg_query) fails to compile instead of silently never matching.

macro_rules! node {
    ($t:ident) => {{
        let _ = ::core::marker::PhantomData::<::pg_query::protobuf::$t>;
        stringify!($t)
    }};
}
pub(super) use node;

pub(super) const NODE: &str = node!(Node);
pub(super) const RAW_STMT: &str = node!(RawStmt);
pub(super) const STRING: &str = node!(String);
pub(super) const INTEGER: &str = node!(Integer);
pub(super) const FLOAT: &str = node!(Float);
pub(super) const BOOLEAN: &str = node!(Boolean);
pub(super) const BIT_STRING: &str = node!(BitString);
pub(super) const LIST: &str = node!(List);
pub(super) const DEF_ELEM: &str = node!(DefElem);
pub(super) const RANGE_VAR: &str = node!(RangeVar);
pub(super) const COLUMN_REF: &str = node!(ColumnRef);
pub(super) const A_STAR: &str = node!(AStar);
pub(super) const FETCH_STMT: &str = node!(FetchStmt);
pub(super) const VIEW_STMT: &str = node!(ViewStmt);
pub(super) const FUNC_CALL: &str = node!(FuncCall);
pub(super) const A_CONST: &str = node!(AConst);
pub(super) const PARAM_REF: &str = node!(ParamRef);
pub(super) const A_EXPR: &str = node!(AExpr);
pub(super) const BOOL_EXPR: &str = node!(BoolExpr);
pub(super) const CURRENT_OF_EXPR: &str = node!(CurrentOfExpr);
pub(super) const MERGE_WHEN_CLAUSE: &str = node!(MergeWhenClause);
pub(super) const LOCKING_CLAUSE: &str = node!(LockingClause);
pub(super) const INTO_CLAUSE: &str = node!(IntoClause);
pub(super) const WITH_CLAUSE: &str = node!(WithClause);
pub(super) const COMMON_TABLE_EXPR: &str = node!(CommonTableExpr);
pub(super) const JOIN_EXPR: &str = node!(JoinExpr);
pub(super) const ALTER_TABLE_CMD: &str = node!(AlterTableCmd);

pub(super) const SELECT_STMT: &str = node!(SelectStmt);
pub(super) const INSERT_STMT: &str = node!(InsertStmt);
pub(super) const UPDATE_STMT: &str = node!(UpdateStmt);
pub(super) const DELETE_STMT: &str = node!(DeleteStmt);
pub(super) const MERGE_STMT: &str = node!(MergeStmt);
pub(super) const EXPLAIN_STMT: &str = node!(ExplainStmt);
pub(super) const COPY_STMT: &str = node!(CopyStmt);
pub(super) const PREPARE_STMT: &str = node!(PrepareStmt);
pub(super) const DECLARE_CURSOR_STMT: &str = node!(DeclareCursorStmt);
pub(super) const VARIABLE_SET_STMT: &str = node!(VariableSetStmt);
pub(super) const TRANSACTION_STMT: &str = node!(TransactionStmt);
pub(super) const DROP_STMT: &str = node!(DropStmt);
pub(super) const RENAME_STMT: &str = node!(RenameStmt);
pub(super) const ALTER_OWNER_STMT: &str = node!(AlterOwnerStmt);
pub(super) const ALTER_OBJECT_SCHEMA_STMT: &str = node!(AlterObjectSchemaStmt);
pub(super) const ALTER_OBJECT_DEPENDS_STMT: &str = node!(AlterObjectDependsStmt);
pub(super) const COMMENT_STMT: &str = node!(CommentStmt);
pub(super) const SEC_LABEL_STMT: &str = node!(SecLabelStmt);
pub(super) const DO_STMT: &str = node!(DoStmt);
pub(super) const CALL_STMT: &str = node!(CallStmt);
pub(super) const EXECUTE_STMT: &str = node!(ExecuteStmt);

// Field names, as serde reports them (the prost struct field names).
pub(super) const WHERE_CLAUSE: &str = "where_clause";
