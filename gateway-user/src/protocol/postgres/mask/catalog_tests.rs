//! Unit tests of `catalog`.

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
fn names_are_looked_up_in_every_schema() {
    let q = names_query(&[
        (None, "plain_notes".into()),
        (Some("s30".into()), "it's".into()),
        (Some("pg_temp".into()), "t".into()),
    ]);
    assert_eq!(
        q,
        "SELECT 0, c.oid FROM pg_catalog.pg_class c WHERE c.relname = 'plain_notes' \
         UNION ALL SELECT 1, pg_catalog.to_regclass('\"s30\".\"it''s\"')::oid \
         UNION ALL SELECT 2, c.oid FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relname = 't' AND n.nspname ~ '^pg_temp_[0-9]+$'"
    );
}

#[test]
fn computed_view_columns() {
    let mut raw = HashMap::new();
    raw.insert(1, rel("customers", &["id", "email"], None, &[]));
    // `CREATE VIEW v AS SELECT email, 'alice@example.com'::text AS guess1, id FROM customers`
    let view = ViewDef {
        origins: Some(vec![(1, 2), (0, 0), (1, 1)]),
        depends: vec![(1, 1), (1, 2)],
    };
    raw.insert(2, rel("v", &["email", "guess1", "id"], Some(view), &[]));
    // `CREATE VIEW w AS SELECT email, guess1, c FROM v, customers c`: plain references all,
    // but guess1 is computed below, and the whole row is no one column's value.
    let view = ViewDef {
        origins: Some(vec![(2, 1), (2, 2), (1, 0)]),
        depends: vec![(2, 1), (2, 2), (1, 0)],
    };
    raw.insert(3, rel("w", &["email", "guess1", "c"], Some(view), &[]));
    raw.insert(4, rel("part", &["id", "email"], None, &[1]));
    // A view whose stored query could not be read.
    let view = ViewDef {
        origins: None,
        depends: vec![(1, 2)],
    };
    raw.insert(5, rel("u", &["email"], Some(view), &[]));
    let at = |oid, att| computed(&raw, oid, att, MAX_DEPTH);
    assert!(!at(1, 2));
    assert!(!at(2, 1) && at(2, 2) && !at(2, 3));
    assert!(!at(3, 1) && at(3, 2) && at(3, 3));
    assert!(!at(4, 2));
    assert!(at(5, 1));
    // Deeper than the trace goes, or not fetched: not known to be plain.
    assert!(computed(&raw, 3, 1, 1));
    assert!(at(99, 1));
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
