//! Printing: tables, indented text, addresses.

use serde_json::Value;

/// `rows` under `header`, each column as wide as its widest cell (the last one unpadded).
pub(super) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let mut l = String::from("     ");
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l += c;
            } else {
                l += &format!("{c:<w$}  ", w = widths[i]);
            }
        }
        l
    };
    println!(
        "{}",
        line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>())
    );
    for r in rows {
        println!("{}", line(r));
    }
}

/// A record DB value as a table cell: `-` for NULL.
pub(super) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(t) => t.clone(),
        v => v.to_string(),
    }
}

pub(super) fn print_indented(text: &str) {
    for line in text.lines().map(str::trim_end) {
        if line.is_empty() {
            println!();
        } else {
            println!("     {line}");
        }
    }
}

pub(super) fn show(a: Option<std::net::SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
}
