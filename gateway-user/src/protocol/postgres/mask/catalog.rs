//! Column origins: a RowDescription names a column by table oid and attribute number; column
//! rules name tables and columns. The gateway resolves the oids through the target's catalog on
//! a short connection of its own (the agent's session is never used for it) and caches them.
//!
//! A view's columns are traced to the base columns they read, from the view's stored query
//! (`pg_rewrite.ev_action`: each output column's `resorigtbl`/`resorigcol`), so a rule on
//! `customers.email` also masks `SELECT e FROM v` for `CREATE VIEW v AS SELECT email AS e …`.
//! A view column computed by an expression has no origin there; it counts as reading every base
//! column the view depends on (`pg_depend`), so a masked column cannot be laundered through
//! `lower(email)` in a view.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use crate::protocol::postgres::{
    backend::{self, BackendError},
    frontend::BoxIo,
};

/// Cached origins are looked up again after this long, for DDL the gateway did not see.
const TTL: Duration = Duration::from_secs(60);
/// Views over views are traced this deep; deeper bases are not looked up.
const MAX_DEPTH: usize = 6;
/// Relations a cache keeps at most; beyond this it starts again empty.
const MAX_CACHED: usize = 100_000;
const MAX_MESSAGE: usize = 64 << 20;

/// A table or view, with its columns by attribute number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub schema: String,
    pub name: String,
    pub columns: HashMap<i16, ColumnInfo>,
}

impl Relation {
    /// Its column names in attribute order (what `COPY t TO STDOUT` writes).
    pub fn column_names(&self) -> Vec<String> {
        let mut cols: Vec<(&i16, &ColumnInfo)> = self.columns.iter().collect();
        cols.sort_by_key(|(attnum, _)| **attnum);
        cols.into_iter().map(|(_, c)| c.name.clone()).collect()
    }
}

#[cfg(test)]
impl Relation {
    /// `public.<name>` with these columns (attnums from 1), none traced anywhere.
    pub fn for_tests(name: &str, columns: &[&str]) -> Relation {
        Relation {
            schema: "public".into(),
            name: name.into(),
            columns: columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let info = ColumnInfo {
                        name: c.to_string(),
                        bases: Vec::new(),
                        computed: false,
                    };
                    (i as i16 + 1, info)
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// For a view column: the base columns (schema, table, column) it reads, through any depth
    /// of views.
    pub bases: Vec<(String, String, String)>,
    /// A view column that is not the value of one base column (a constant, an expression,
    /// a set operation, a whole row): masked by its bases' rules, it is redacted, never
    /// hashed or cut, since its value need not be the masked column's (a hash of a constant
    /// would let the agent test guesses against the hashes of the real column).
    pub computed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot open the gateway's catalog connection: {0}")]
    Connect(String),
    #[error("catalog query: {0}")]
    Query(#[from] BackendError),
    #[error("the catalog answered with a row the gateway cannot read")]
    BadRow,
}

pub type Opener =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<BoxIo, String>> + Send>> + Send + Sync>;

/// What the sessions of one database of one target share: relations by oid, and the
/// relations each name may refer to.
#[derive(Default)]
pub struct Shared {
    relations: Mutex<HashMap<u32, (Instant, Arc<Relation>)>>,
    /// A name as a statement writes it → every relation it may refer to (see
    /// [`Catalog::resolve`]).
    names: Mutex<HashMap<TableName, (Instant, Vec<u32>)>>,
    /// Bumped by every invalidation, so that a lookup that started before DDL does not store
    /// what it found after it.
    generation: AtomicU64,
}

pub type Cache = Arc<Shared>;

/// A table as a statement names it: schema if written, and name.
pub type TableName = (Option<String>, String);

/// One session's view of the column origins of its database: the shared cache, and the
/// session's own way to open a catalog connection (with the target settings it was admitted
/// under).
pub struct Catalog {
    open: Opener,
    cache: Cache,
    /// The session may have DDL in an open transaction: what it created, renamed or dropped
    /// there (a TEMP VIEW that shadows a table) is invisible to the gateway's own connection
    /// until it commits.
    uncommitted_ddl: AtomicBool,
}

impl Catalog {
    pub fn new(open: Opener, cache: Cache) -> Catalog {
        Catalog {
            open,
            cache,
            uncommitted_ddl: AtomicBool::new(false),
        }
    }

    /// The session is sending DDL, or the server has run some: until the session is next
    /// idle outside a transaction, names may not mean what the catalog says.
    pub fn ddl_in_flight(&self) {
        self.uncommitted_ddl.store(true, Ordering::SeqCst);
    }

    /// The server is idle outside a transaction with nothing of the session's in flight:
    /// whatever DDL it ran is committed or rolled back.
    pub fn idle(&self) {
        self.uncommitted_ddl.store(false, Ordering::SeqCst);
    }

    pub fn uncommitted_ddl(&self) -> bool {
        self.uncommitted_ddl.load(Ordering::SeqCst)
    }

    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<TableName, (Instant, Vec<u32>)>> {
        self.cache.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every relation the names of a statement may refer to, for the caller to judge them
    /// together (masked if any of them is); a name no relation has gives one `None`, on which
    /// the caller fails closed.
    ///
    /// A schema-qualified name is one relation. An unqualified name is resolved by the server
    /// through the session's `search_path` (and its temporary schema first), which the agent
    /// can change in ways the gateway cannot follow (SET, `set_config`, a function that calls
    /// it, a role or database default changed after login, `"$user"`, a TEMP object that
    /// shadows a table): it counts as every relation of that name in any schema, so whatever
    /// the path, the one the server picks is among them. `pg_temp.name` is every temporary
    /// relation of that name (the session's temporary schema is not the gateway's).
    pub async fn resolve(
        &self,
        tables: &[TableName],
    ) -> Result<Vec<Option<Arc<Relation>>>, CatalogError> {
        let mut missing: Vec<TableName> = {
            let names = self.names();
            tables
                .iter()
                .filter(|t| !matches!(names.get(*t), Some((at, _)) if at.elapsed() < TTL))
                .cloned()
                .collect()
        };
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            let generation = self.cache.generation.load(Ordering::SeqCst);
            let mut conn = (self.open)().await.map_err(CatalogError::Connect)?;
            let rows = backend::simple_query(&mut conn, &names_query(&missing), MAX_MESSAGE).await;
            let _ = tokio::io::AsyncWriteExt::write_all(&mut conn, b"X\0\0\0\x04").await;
            let mut found: Vec<Vec<u32>> = vec![Vec::new(); missing.len()];
            for row in rows? {
                let [Some(i), oid] =
                    <[Option<String>; 2]>::try_from(row).map_err(|_| CatalogError::BadRow)?
                else {
                    return Err(CatalogError::BadRow);
                };
                let i: usize = i.parse().map_err(|_| CatalogError::BadRow)?;
                let slot = found.get_mut(i).ok_or(CatalogError::BadRow)?;
                // NULL: to_regclass found nothing.
                if let Some(oid) = oid {
                    let oid: u32 = oid.parse().map_err(|_| CatalogError::BadRow)?;
                    if !slot.contains(&oid) {
                        slot.push(oid);
                    }
                }
            }
            {
                let now = Instant::now();
                let mut names = self.names();
                // Answer from what was just found either way; store it only if no DDL ran
                // meanwhile.
                if self.cache.generation.load(Ordering::SeqCst) == generation {
                    if names.len() > MAX_CACHED {
                        names.clear();
                    }
                    for (key, oids) in missing.iter().cloned().zip(found.iter().cloned()) {
                        names.insert(key, (now, oids));
                    }
                }
            }
            return self
                .relations_of(tables, |t| {
                    missing
                        .iter()
                        .position(|m| m == t)
                        .map(|i| found[i].clone())
                })
                .await;
        }
        self.relations_of(tables, |_| None).await
    }

    /// The relations of `tables`, each name's oids from `fresh` or else the cache.
    async fn relations_of(
        &self,
        tables: &[TableName],
        fresh: impl Fn(&TableName) -> Option<Vec<u32>>,
    ) -> Result<Vec<Option<Arc<Relation>>>, CatalogError> {
        let oids: Vec<Vec<u32>> = {
            let names = self.names();
            tables
                .iter()
                .map(|t| {
                    fresh(t)
                        .or_else(|| names.get(t).map(|(_, oids)| oids.clone()))
                        .unwrap_or_default()
                })
                .collect()
        };
        let wanted: Vec<(u32, i16)> = oids.iter().flatten().map(|o| (*o, 0)).collect();
        let rels = if wanted.is_empty() {
            HashMap::new()
        } else {
            self.relations(&wanted).await?
        };
        let mut out = Vec::new();
        for name in oids {
            if name.is_empty() {
                out.push(None);
            }
            // A relation dropped between the two lookups is a `None` too.
            out.extend(name.iter().map(|o| rels.get(o).cloned()));
        }
        Ok(out)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (Instant, Arc<Relation>)>> {
        self.cache
            .relations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything, for every session of the database: a session ran DDL that may have
    /// renamed, redefined or created something (a view that another session's name now
    /// finds too).
    pub fn invalidate(&self) {
        self.cache.generation.fetch_add(1, Ordering::SeqCst);
        self.cache().clear();
        self.names().clear();
    }

    /// The relations of `needed` (table oid, attribute number). A relation missing from the
    /// answer is absent from the map (dropped meanwhile); the caller fails closed on it.
    pub async fn relations(
        &self,
        needed: &[(u32, i16)],
    ) -> Result<HashMap<u32, Arc<Relation>>, CatalogError> {
        let mut found = HashMap::new();
        let mut missing = HashSet::new();
        {
            let cache = self.cache();
            for (oid, att) in needed {
                match cache.get(oid) {
                    // Attribute 0: the relation is wanted whole, whatever its columns.
                    Some((at, rel))
                        if at.elapsed() < TTL && (*att == 0 || rel.columns.contains_key(att)) =>
                    {
                        found.insert(*oid, rel.clone());
                    }
                    _ => {
                        missing.insert(*oid);
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let generation = self.cache.generation.load(Ordering::SeqCst);
        let mut conn = (self.open)().await.map_err(CatalogError::Connect)?;
        let fetched = fetch(&mut conn, &missing.into_iter().collect::<Vec<_>>()).await;
        // Terminate; the connection is dropped either way.
        let _ = tokio::io::AsyncWriteExt::write_all(&mut conn, b"X\0\0\0\x04").await;
        let fetched = fetched?;
        let mut cache = self.cache();
        if self.cache.generation.load(Ordering::SeqCst) != generation {
            // DDL ran meanwhile: answer from what was found, store nothing.
            found.extend(fetched.into_iter().map(|(o, r)| (o, Arc::new(r))));
            return Ok(found);
        }
        if cache.len() + fetched.len() > MAX_CACHED {
            cache.clear();
        }
        let now = Instant::now();
        for (oid, rel) in fetched {
            let rel = Arc::new(rel);
            cache.insert(oid, (now, rel.clone()));
            found.insert(oid, rel);
        }
        Ok(found)
    }
}

/// One query that finds the relations of each name: rows of (index into `names`, oid), the
/// oid NULL where a qualified name is not found.
fn names_query(names: &[TableName]) -> String {
    // standard_conforming_strings is on (the login refuses a server without it): doubling
    // quotes is all a literal needs.
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let parts: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, (schema, name))| match schema.as_deref() {
            None => format!(
                "SELECT {i}, c.oid FROM pg_catalog.pg_class c WHERE c.relname = {}",
                lit(name)
            ),
            Some("pg_temp") => format!(
                "SELECT {i}, c.oid FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relname = {} AND n.nspname ~ '^pg_temp_[0-9]+$'",
                lit(name)
            ),
            Some(s) => format!(
                "SELECT {i}, pg_catalog.to_regclass({})::oid",
                lit(&format!("{}.{}", ident(s), ident(name)))
            ),
        })
        .collect();
    parts.join(" UNION ALL ")
}

/// What the catalog says of one relation, before views are traced.
struct Raw {
    schema: String,
    name: String,
    columns: HashMap<i16, String>,
    view: Option<ViewDef>,
    /// The tables it inherits from (partitions and inheritance children): each of its columns
    /// also counts as the same-named column of each of them.
    parents: Vec<u32>,
}

struct ViewDef {
    /// Per output column (attnum - 1): the base column it shows, if it is a plain reference.
    origins: Option<Vec<(u32, i16)>>,
    /// Every base column the view reads; attribute number 0 is a whole-row read of that
    /// relation (every column).
    depends: Vec<(u32, i16)>,
}

async fn fetch(conn: &mut BoxIo, oids: &[u32]) -> Result<HashMap<u32, Relation>, CatalogError> {
    let mut raw: HashMap<u32, Raw> = HashMap::new();
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut wanted: Vec<u32> = oids.to_vec();
    for _ in 0..MAX_DEPTH {
        wanted.retain(|o| !raw.contains_key(o));
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            break;
        }
        let list = oid_list(&wanted);
        let rows = backend::simple_query(
            conn,
            &format!(
                "SELECT c.oid, n.nspname, c.relname, c.relkind, a.attnum, a.attname \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
                 WHERE c.oid IN ({list}) AND a.attnum > 0 AND NOT a.attisdropped"
            ),
            MAX_MESSAGE,
        )
        .await?;
        let mut views = Vec::new();
        for row in rows {
            let [Some(oid), Some(schema), Some(name), Some(kind), Some(attnum), Some(attname)] =
                <[Option<String>; 6]>::try_from(row).map_err(|_| CatalogError::BadRow)?
            else {
                return Err(CatalogError::BadRow);
            };
            let oid: u32 = oid.parse().map_err(|_| CatalogError::BadRow)?;
            let attnum: i16 = attnum.parse().map_err(|_| CatalogError::BadRow)?;
            let entry = raw.entry(oid).or_insert_with(|| Raw {
                schema,
                name,
                columns: HashMap::new(),
                view: None,
                parents: Vec::new(),
            });
            entry.columns.insert(attnum, attname);
            if (kind == "v" || kind == "m") && !views.contains(&oid) {
                views.push(oid);
            }
        }
        let mut next = Vec::new();
        // Every ancestor (through partitioning or inheritance) of what this round fetched, in
        // one query; their columns come in the next round.
        for (child, parent) in ancestors(conn, &list).await? {
            let known = parents.entry(child).or_default();
            if !known.contains(&parent) {
                known.push(parent);
            }
            next.push(parent);
        }
        if !views.is_empty() {
            for (oid, def) in view_defs(conn, &views).await? {
                next.extend(def.depends.iter().map(|d| d.0));
                if let Some(o) = &def.origins {
                    next.extend(o.iter().map(|d| d.0).filter(|t| *t != 0));
                }
                if let Some(r) = raw.get_mut(&oid) {
                    r.view = Some(def);
                }
            }
        }
        wanted = next;
    }
    for (child, p) in parents {
        if let Some(r) = raw.get_mut(&child) {
            r.parents = p;
        }
    }
    let mut out = HashMap::new();
    for oid in oids {
        let Some(r) = raw.get(oid) else { continue };
        let mut columns = HashMap::new();
        for (attnum, name) in &r.columns {
            let bases = bases_of(&raw, *oid, *attnum);
            columns.insert(
                *attnum,
                ColumnInfo {
                    name: name.clone(),
                    bases,
                    computed: computed(&raw, *oid, *attnum, MAX_DEPTH),
                },
            );
        }
        out.insert(
            *oid,
            Relation {
                schema: r.schema.clone(),
                name: r.name.clone(),
                columns,
            },
        );
    }
    Ok(out)
}

/// The base columns a column reads: for a view column, the columns it shows (through any
/// depth of views); for a column of a partition or inheritance child, the same-named column of
/// each ancestor; both combined for a view over a child. Nothing for a plain table column.
fn bases_of(raw: &HashMap<u32, Raw>, oid: u32, attnum: i16) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    base_columns(raw, oid, attnum, &mut seen, &mut out);
    out
}

/// Each (relation, column) is expanded once, so shared or whole-row dependencies cost one
/// visit each however many paths lead to them, and a cycle ends.
fn base_columns(
    raw: &HashMap<u32, Raw>,
    oid: u32,
    attnum: i16,
    seen: &mut HashSet<(u32, i16)>,
    out: &mut Vec<(String, String, String)>,
) {
    if !seen.insert((oid, attnum)) {
        return;
    }
    let Some(rel) = raw.get(&oid) else {
        return;
    };
    let mut push = |base: &Raw, name: &String| {
        let entry = (base.schema.clone(), base.name.clone(), name.clone());
        if !out.contains(&entry) {
            out.push(entry);
        }
    };
    let mut next: Vec<(u32, i16)> = Vec::new();
    if let Some(name) = rel.columns.get(&attnum) {
        for p in &rel.parents {
            let Some(parent) = raw.get(p) else { continue };
            if let Some((patt, pname)) = parent.columns.iter().find(|(_, n)| *n == name) {
                push(parent, pname);
                next.push((*p, *patt));
            }
        }
    }
    if let Some(view) = rel.view.as_ref() {
        let plain = view
            .origins
            .as_ref()
            .and_then(|o| o.get(attnum as usize - 1))
            .filter(|(t, c)| *t != 0 && *c > 0);
        // An expression column (or a view whose stored query could not be read) counts as
        // reading everything the view reads.
        let sources: Vec<(u32, i16)> = match plain {
            Some(o) => vec![*o],
            None => view.depends.clone(),
        };
        for (t, c) in sources {
            let Some(base) = raw.get(&t) else { continue };
            let cols = if c == 0 {
                // A whole-row read (`c::text`, `row_to_json(c)`): every column.
                let mut all: Vec<i16> = base.columns.keys().copied().collect();
                all.sort_unstable();
                all
            } else {
                vec![c]
            };
            for c in cols {
                if let Some(name) = base.columns.get(&c) {
                    push(base, name);
                }
                next.push((t, c));
            }
        }
    }
    for (t, c) in next {
        base_columns(raw, t, c, seen, out);
    }
}

/// Whether a column's value may differ from every base column it reads: a view column that is
/// not a plain reference (`resorigtbl`/`resorigcol` unset) at some level of views, or whose
/// trace cannot be followed (a stored query not read, a relation deeper than was fetched).
/// A table's column (a partition's too) is its own value.
fn computed(raw: &HashMap<u32, Raw>, oid: u32, attnum: i16, depth: usize) -> bool {
    let Some(rel) = raw.get(&oid) else {
        return true;
    };
    let Some(view) = &rel.view else {
        return false;
    };
    if depth == 0 || attnum < 1 {
        return true;
    }
    match view
        .origins
        .as_ref()
        .and_then(|o| o.get(attnum as usize - 1))
    {
        Some(&(t, c)) if t != 0 && c > 0 => computed(raw, t, c, depth - 1),
        _ => true,
    }
}

/// `(child, parent)` pairs of every ancestor of the relations in `list` (an oid list), through
/// pg_inherits, at most MAX_DEPTH levels up.
async fn ancestors(conn: &mut BoxIo, list: &str) -> Result<Vec<(u32, u32)>, CatalogError> {
    let rows = backend::simple_query(
        conn,
        &format!(
            "WITH RECURSIVE up(child, parent, depth) AS ( \
               SELECT i.inhrelid, i.inhparent, 1 FROM pg_catalog.pg_inherits i \
               WHERE i.inhrelid IN ({list}) \
               UNION \
               SELECT i.inhrelid, i.inhparent, up.depth + 1 FROM pg_catalog.pg_inherits i \
               JOIN up ON i.inhrelid = up.parent WHERE up.depth < {MAX_DEPTH}) \
             SELECT DISTINCT child, parent FROM up"
        ),
        MAX_MESSAGE,
    )
    .await?;
    rows.into_iter()
        .map(|row| match row.as_slice() {
            [Some(c), Some(p)] => match (c.parse(), p.parse()) {
                (Ok(c), Ok(p)) => Ok((c, p)),
                _ => Err(CatalogError::BadRow),
            },
            _ => Err(CatalogError::BadRow),
        })
        .collect()
}

async fn view_defs(conn: &mut BoxIo, views: &[u32]) -> Result<Vec<(u32, ViewDef)>, CatalogError> {
    let list = oid_list(views);
    let actions = backend::simple_query(
        conn,
        &format!(
            "SELECT r.ev_class, r.ev_action FROM pg_catalog.pg_rewrite r \
             WHERE r.ev_class IN ({list}) AND r.rulename = '_RETURN'"
        ),
        MAX_MESSAGE,
    )
    .await?;
    let depends = backend::simple_query(
        conn,
        &format!(
            "SELECT DISTINCT r.ev_class, d.refobjid, d.refobjsubid FROM pg_catalog.pg_rewrite r \
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass \
               AND d.objid = r.oid \
             WHERE r.ev_class IN ({list}) AND d.refclassid = 'pg_catalog.pg_class'::regclass \
               AND d.refobjsubid >= 0 AND d.refobjid <> r.ev_class"
        ),
        MAX_MESSAGE,
    )
    .await?;
    let num = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<i64>().ok());
    let mut out = Vec::new();
    for &view in views {
        let action = actions
            .iter()
            .find(|r| r.first().and_then(num) == Some(view as i64))
            .and_then(|r| r.get(1).cloned().flatten());
        let origins = action.as_deref().and_then(target_origins);
        let mut deps = Vec::new();
        for row in &depends {
            if row.first().and_then(num) != Some(view as i64) {
                continue;
            }
            match (row.get(1).and_then(num), row.get(2).and_then(num)) {
                (Some(t), Some(c)) => deps.push((t as u32, c as i16)),
                _ => return Err(CatalogError::BadRow),
            }
        }
        // PostgreSQL drops a whole-row dependency on a table when the view also names one of
        // its columns (`SELECT c::text, c.id FROM customers c` depends on `customers.id`
        // only): a whole-row reference anywhere in the stored query (or a query that could
        // not be read) makes every relation the view depends on count as read whole.
        if action.as_deref().is_none_or(reads_whole_row) {
            whole_rows(&mut deps);
        }
        out.push((
            view,
            ViewDef {
                origins,
                depends: deps,
            },
        ));
    }
    Ok(out)
}

/// Whether a stored query (`pg_node_tree` text) holds a whole-row Var (`:varattno 0`).
fn reads_whole_row(tree: &str) -> bool {
    tokenize(tree)
        .windows(2)
        .any(|w| w[0] == ":varattno" && w[1] == "0")
}

/// Adds a whole-row read (attribute 0) of every relation in `deps`.
fn whole_rows(deps: &mut Vec<(u32, i16)>) {
    let mut tables: Vec<u32> = deps.iter().map(|d| d.0).collect();
    tables.sort_unstable();
    tables.dedup();
    for t in tables {
        if !deps.contains(&(t, 0)) {
            deps.push((t, 0));
        }
    }
}

fn oid_list(oids: &[u32]) -> String {
    oids.iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// From a view's stored query (`pg_node_tree` text), the origin of each output column in
/// order: `(resorigtbl, resorigcol)` of the top-level query's non-junk target entries. `None`
/// when the text is not laid out as expected; the caller then treats every column as reading
/// every dependency.
fn target_origins(tree: &str) -> Option<Vec<(u32, i16)>> {
    let tokens = tokenize(tree);
    let mut it = tokens.iter().peekable();
    // `({QUERY ...` — the first query of the rule's action list.
    if it.next()? != "(" || it.next()? != "{" || it.next()? != "QUERY" {
        return None;
    }
    let mut depth = 2usize;
    while let Some(t) = it.next() {
        match t.as_str() {
            "(" | "{" => depth += 1,
            ")" | "}" => {
                depth -= 1;
                if depth < 2 {
                    return None;
                }
            }
            ":targetList" if depth == 2 => {
                if it.next()? != "(" {
                    return None;
                }
                return target_list(&mut it);
            }
            _ => {}
        }
    }
    None
}

fn target_list<'a>(it: &mut impl Iterator<Item = &'a String>) -> Option<Vec<(u32, i16)>> {
    let mut out = Vec::new();
    loop {
        match it.next()?.as_str() {
            ")" => return Some(out),
            "{" => {}
            _ => return None,
        }
        if it.next()? != "TARGETENTRY" {
            return None;
        }
        let (mut resno, mut tbl, mut col, mut junk) = (None, None, None, None);
        let mut depth = 1usize;
        let mut key: Option<&str> = None;
        while depth > 0 {
            let t = it.next()?;
            match t.as_str() {
                "(" | "{" => depth += 1,
                ")" | "}" => depth -= 1,
                k if depth == 1 && k.starts_with(':') => {
                    key = Some(k);
                    continue;
                }
                v if depth == 1 => match key {
                    Some(":resno") => resno = v.parse::<i16>().ok(),
                    Some(":resorigtbl") => tbl = v.parse::<u32>().ok(),
                    Some(":resorigcol") => col = v.parse::<i16>().ok(),
                    Some(":resjunk") => junk = Some(v == "true"),
                    _ => {}
                },
                _ => {}
            }
            key = None;
        }
        if junk? {
            continue;
        }
        if resno? as usize != out.len() + 1 {
            return None;
        }
        out.push((tbl?, col?));
    }
}

/// `pg_node_tree` text: `(`, `)`, `{`, `}` and atoms separated by white space; a backslash
/// makes the next character part of the atom.
fn tokenize(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '(' | ')' | '{' | '}' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
#[path = "catalog_tests.rs"]
mod tests;
