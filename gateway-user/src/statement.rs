//! What one action of an agent is, as rules judge it and the record keeps it, whatever its
//! protocol: its class, the relations and functions it names, and what its output may come
//! from. A protocol's classifier fills it in (PostgreSQL: `protocol::postgres::classify`).

use std::fmt;

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
        }
    }
}
