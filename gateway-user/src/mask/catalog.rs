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
    sync::{Arc, Mutex},
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

/// Relations by oid, shared by the sessions of one database of one target.
pub type Cache = Arc<Mutex<HashMap<u32, (Instant, Arc<Relation>)>>>;

/// A table as a statement names it: schema if written, and name.
pub type TableName = (Option<String>, String);

/// One session's view of the column origins of its database: a shared cache, and the session's
/// own way to open a catalog connection (with the target settings it was admitted under).
pub struct Catalog {
    open: Opener,
    cache: Cache,
    /// Table names as a statement writes them → oid (`None`: not found), for this session.
    names: Mutex<HashMap<TableName, (Instant, Option<u32>)>>,
}

impl Catalog {
    pub fn new(open: Opener, cache: Cache) -> Catalog {
        Catalog {
            open,
            cache,
            names: Mutex::new(HashMap::new()),
        }
    }

    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<TableName, (Instant, Option<u32>)>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The relations a statement names (schema, name), in order; `None` for a name the
    /// gateway's connection cannot find (another session's temporary table, another
    /// search_path): the caller fails closed on it.
    pub async fn resolve(
        &self,
        tables: &[(Option<String>, String)],
    ) -> Result<Vec<Option<Arc<Relation>>>, CatalogError> {
        let mut missing: Vec<(Option<String>, String)> = {
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
            let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            let exprs: Vec<String> = missing
                .iter()
                .map(|(schema, name)| {
                    let qualified = match schema {
                        Some(s) => format!("{}.{}", ident(s), ident(name)),
                        None => ident(name),
                    };
                    format!(
                        "pg_catalog.to_regclass('{}')::oid",
                        qualified.replace('\'', "''")
                    )
                })
                .collect();
            let mut conn = (self.open)().await.map_err(CatalogError::Connect)?;
            let rows = backend::simple_query(
                &mut conn,
                &format!("SELECT {}", exprs.join(", ")),
                MAX_MESSAGE,
            )
            .await;
            let _ = tokio::io::AsyncWriteExt::write_all(&mut conn, b"X\0\0\0\x04").await;
            let row = rows?.into_iter().next().ok_or(CatalogError::BadRow)?;
            if row.len() != missing.len() {
                return Err(CatalogError::BadRow);
            }
            let now = Instant::now();
            let mut names = self.names();
            if names.len() > MAX_CACHED {
                names.clear();
            }
            for (key, oid) in missing.into_iter().zip(row) {
                let oid = oid.and_then(|o| o.parse::<u32>().ok());
                names.insert(key, (now, oid));
            }
        }
        let oids: Vec<Option<u32>> = {
            let names = self.names();
            tables
                .iter()
                .map(|t| names.get(t).and_then(|(_, oid)| *oid))
                .collect()
        };
        let wanted: Vec<(u32, i16)> = oids.iter().flatten().map(|o| (*o, 0)).collect();
        let rels = if wanted.is_empty() {
            HashMap::new()
        } else {
            self.relations(&wanted).await?
        };
        Ok(oids
            .into_iter()
            .map(|o| o.and_then(|o| rels.get(&o).cloned()))
            .collect())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (Instant, Arc<Relation>)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything: the session ran DDL that may have renamed or redefined something.
    pub fn invalidate(&self) {
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
        let mut conn = (self.open)().await.map_err(CatalogError::Connect)?;
        let fetched = fetch(&mut conn, &missing.into_iter().collect::<Vec<_>>()).await;
        // Terminate; the connection is dropped either way.
        let _ = tokio::io::AsyncWriteExt::write_all(&mut conn, b"X\0\0\0\x04").await;
        let fetched = fetched?;
        let mut cache = self.cache();
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
mod tests {
    use super::*;

    #[test]
    fn view_target_origins() {
        // Shortened from PostgreSQL 15's ev_action of
        // `CREATE VIEW v AS SELECT id, email AS e, lower(name) AS n FROM customers`.
        let tree = "({QUERY :commandType 1 :querySource 0 :canSetTag true :utilityStmt <> \
            :rtable ({RANGETBLENTRY :alias {ALIAS :aliasname old :colnames <>} :rtekind 0 :relid 16390 \
            :subquery <> :values_lists <>}) \
            :jointree {FROMEXPR :fromlist ({RANGETBLREF :rtindex 3}) :quals <>} \
            :targetList ({TARGETENTRY :expr {VAR :varno 3 :varattno 1 :vartype 23} :resno 1 \
            :resname id :ressortgroupref 0 :resorigtbl 16390 :resorigcol 1 :resjunk false} \
            {TARGETENTRY :expr {VAR :varno 3 :varattno 3} :resno 2 :resname e :ressortgroupref 0 \
            :resorigtbl 16390 :resorigcol 3 :resjunk false} \
            {TARGETENTRY :expr {FUNCEXPR :funcid 870 :args ({VAR :varno 3 :varattno 2}) :location 9} \
            :resno 3 :resname n :ressortgroupref 0 :resorigtbl 0 :resorigcol 0 :resjunk false}) \
            :override 0 :onConflict <> :returningList <> :groupClause <> :havingQual <>})";
        assert_eq!(
            target_origins(tree),
            Some(vec![(16390, 1), (16390, 3), (0, 0)])
        );
        assert_eq!(target_origins("garbage"), None);
        assert_eq!(
            target_origins("({QUERY :targetList ({TARGETENTRY :resno 2})})"),
            None
        );
        assert_eq!(tokenize(r"a\ b (c)"), vec!["a b", "(", "c", ")"]);
    }

    fn rel(name: &str, columns: &[&str], view: Option<ViewDef>, parents: &[u32]) -> Raw {
        Raw {
            schema: "public".into(),
            name: name.into(),
            columns: columns
                .iter()
                .enumerate()
                .map(|(i, c)| (i as i16 + 1, c.to_string()))
                .collect(),
            view,
            parents: parents.to_vec(),
        }
    }

    fn cols(raw: &HashMap<u32, Raw>, oid: u32, att: i16) -> Vec<String> {
        bases_of(raw, oid, att)
            .into_iter()
            .map(|c| format!("{}.{}", c.1, c.2))
            .collect()
    }

    #[test]
    fn view_columns_trace_to_bases() {
        let mut raw = HashMap::new();
        raw.insert(1, rel("customers", &["id", "email"], None, &[]));
        let view = ViewDef {
            origins: Some(vec![(1, 1), (1, 2), (0, 0)]),
            depends: vec![(1, 1), (1, 2)],
        };
        raw.insert(2, rel("v", &["id", "e", "n"], Some(view), &[]));
        assert_eq!(cols(&raw, 2, 1), vec!["customers.id"]);
        assert_eq!(cols(&raw, 2, 2), vec!["customers.email"]);
        // The expression column reads everything the view reads.
        assert_eq!(cols(&raw, 2, 3), vec!["customers.id", "customers.email"]);
        assert!(cols(&raw, 1, 2).is_empty());
    }

    #[test]
    fn whole_row_dependencies_read_every_column() {
        let mut raw = HashMap::new();
        raw.insert(1, rel("customers", &["id", "email", "ssn"], None, &[]));
        raw.insert(3, rel("orders", &["id", "total"], None, &[]));
        // `CREATE VIEW vrow AS SELECT c::text AS t, o.total FROM customers c JOIN orders o …`
        let view = ViewDef {
            origins: Some(vec![(0, 0), (3, 2)]),
            depends: vec![(1, 0), (3, 2)],
        };
        raw.insert(2, rel("vrow", &["t", "total"], Some(view), &[]));
        assert_eq!(
            cols(&raw, 2, 1),
            vec![
                "customers.id",
                "customers.email",
                "customers.ssn",
                "orders.total"
            ]
        );
        assert_eq!(cols(&raw, 2, 2), vec!["orders.total"]);
        // A whole-row Var that is the column itself: origin (table, 0).
        let view = ViewDef {
            origins: Some(vec![(1, 0)]),
            depends: vec![(1, 0)],
        };
        raw.insert(4, rel("vc", &["c"], Some(view), &[]));
        assert_eq!(
            cols(&raw, 4, 1),
            vec!["customers.id", "customers.email", "customers.ssn"]
        );
        // Views over the whole rows of views: every path is walked once.
        for oid in 5..40u32 {
            let view = ViewDef {
                origins: Some(vec![(0, 0), (0, 0), (0, 0)]),
                depends: vec![(oid - 1, 0), (1, 0)],
            };
            raw.insert(
                oid,
                rel(&format!("w{oid}"), &["a", "b", "c"], Some(view), &[]),
            );
        }
        assert!(cols(&raw, 39, 1).contains(&"customers.ssn".to_string()));
    }

    #[test]
    fn whole_row_references_in_stored_queries() {
        assert!(reads_whole_row(
            "({QUERY :targetList ({TARGETENTRY :expr {FUNCEXPR :args ({VAR :varno 1 \
             :varattno 0 :vartype 16390}) :location 7} :resno 1 :resorigtbl 0 :resorigcol 0 \
             :resjunk false})})"
        ));
        assert!(!reads_whole_row(
            "({QUERY :targetList ({TARGETENTRY :expr {VAR :varno 1 :varattno 10} :resno 1})})"
        ));
        let mut deps = vec![(7, 2), (8, 1), (7, 3), (8, 0)];
        whole_rows(&mut deps);
        assert_eq!(deps, vec![(7, 2), (8, 1), (7, 3), (8, 0), (7, 0)]);
    }

    #[test]
    fn children_count_as_their_ancestors() {
        let mut raw = HashMap::new();
        raw.insert(1, rel("people", &["id", "tax_id"], None, &[]));
        // A partition of a partition, with a column of its own.
        raw.insert(2, rel("people_p1", &["id", "tax_id"], None, &[1]));
        raw.insert(3, rel("people_p1a", &["tax_id", "id", "extra"], None, &[2]));
        assert_eq!(cols(&raw, 2, 2), vec!["people.tax_id"]);
        assert_eq!(cols(&raw, 3, 1), vec!["people_p1.tax_id", "people.tax_id"]);
        assert!(cols(&raw, 3, 3).is_empty());
        assert!(cols(&raw, 1, 2).is_empty());
        // A view over a child: the child's column and, through it, the ancestor's.
        let view = ViewDef {
            origins: Some(vec![(3, 1)]),
            depends: vec![(3, 1)],
        };
        raw.insert(4, rel("v", &["t"], Some(view), &[]));
        assert_eq!(
            cols(&raw, 4, 1),
            vec!["people_p1a.tax_id", "people_p1.tax_id", "people.tax_id"]
        );
        // A parent not fetched (deeper than the rounds reach) is skipped.
        raw.insert(5, rel("orphan", &["tax_id"], None, &[99]));
        assert!(cols(&raw, 5, 1).is_empty());
    }
}
