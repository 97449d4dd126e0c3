//! The canonical form of SQL text that statement rules' `patterns` match
//! (`policy::Canonicalize`).

/// Each statement of `text` as libpg_query prints it back (comments gone, keywords in upper
/// case, single spaces), then with constants replaced by `$1`, `$2`, …: what `patterns` match.
/// Matching the text as written would let a comment or a statement in front hide a match.
pub fn canonical_statements(text: &str) -> Option<Vec<String>> {
    let parsed = pg_query::parse(text, pg_query::ParserOptions::DEFAULT).ok()?;
    parsed
        .protobuf
        .stmts
        .iter()
        .map(|raw| {
            let one = pg_query::protobuf::ParseResult {
                version: parsed.protobuf.version,
                stmts: vec![raw.clone()],
            };
            let sql = pg_query::deparse(&one, Default::default()).ok()?;
            pg_query::normalize(&sql).ok()
        })
        .collect()
}
