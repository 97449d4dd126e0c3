//! The benchmark's report: every table a section prints also goes into its part of
//! `docs/benchmarks.md`, so the published figures are exactly the ones the run printed.
//!
//! The document keeps one part per section between `<!-- bench:KEY begin -->` and
//! `<!-- bench:KEY end -->`; a run replaces the parts of the sections it ran and keeps the
//! others, so `--only` refreshes one section without losing the rest.

use std::{fs, path::PathBuf, process::Command, sync::Mutex};

use anyhow::Context;

use crate::util;

/// What the running section has printed so far.
static SECTION: Mutex<String> = Mutex::new(String::new());

/// Prints a line and keeps it for the document.
pub fn line(text: String) {
    println!("{text}");
    let mut section = SECTION.lock().unwrap_or_else(|e| e.into_inner());
    section.push_str(&text);
    section.push('\n');
}

/// `println!` for the report: the line goes to stdout and into the section's part of the
/// document.
macro_rules! md {
    () => {
        $crate::report::line(String::new())
    };
    ($($arg:tt)*) => {
        $crate::report::line(format!($($arg)*))
    };
}
pub(crate) use md;

/// The sections in the order the document lists them, with their headings.
pub const SECTIONS: [(&str, &str); 8] = [
    (
        "capture",
        "Capture: connect() with the eBPF hook, L4 relay throughput",
    ),
    (
        "postgres",
        "PostgreSQL: pgbench against direct, HAProxy and PgBouncer",
    ),
    ("masking", "Masking: a wide PII table streamed"),
    ("record", "Recording: the audit writer in the loop"),
    (
        "record-scale",
        "Record scale: start-up and the audit commands on a large record",
    ),
    (
        "flood",
        "Flood: the gateway's memory after a connection flood, by allocator",
    ),
    (
        "ssh",
        "SSH: round trip and throughput, direct vs HAProxy vs agentgate",
    ),
    (
        "http",
        "HTTP and Kubernetes: kubectl, a large list, keep-alive requests/s, a long watch",
    ),
];

const INTRO: &str = "# Benchmarks\n\n\
Side-by-side measurements from `cargo xtask bench` (release build, needs root; about an hour \
with the defaults), written into this file by the run itself. Each section names the command \
that produced it, the machine, the software versions and the commit; sections may come from \
different runs (`cargo xtask bench --only SECTION` refreshes one). Contenders alternate run by \
run within every repetition; tables give medians with min–max over the repetitions. The goals \
of the project are reported in each section's \"against the goals\" table; they are figures to \
read, never test assertions.\n";

/// Starts a section: forgets what an earlier one printed and prints the heading, the command
/// that reproduces the section and the machine it ran on.
pub fn begin(key: &str, command: &str) -> anyhow::Result<()> {
    // A section missing from SECTIONS would be left out of the document.
    let Some((_, title)) = SECTIONS.iter().find(|(k, _)| *k == key) else {
        anyhow::bail!("bench section `{key}` is not in report::SECTIONS");
    };
    SECTION.lock().unwrap_or_else(|e| e.into_inner()).clear();
    md!("## {title}\n");
    md!("command: `{command}`  ");
    md!("{}", machine());
    Ok(())
}

/// Ends a section: replaces its part of `docs/benchmarks.md` with what it printed.
pub fn publish(key: &str) -> anyhow::Result<()> {
    let body = std::mem::take(&mut *SECTION.lock().unwrap_or_else(|e| e.into_inner()));
    let path = doc_path();
    let old = fs::read_to_string(&path).unwrap_or_default();
    let doc = splice(&old, key, &body);
    fs::write(&path, doc).with_context(|| format!("write {}", path.display()))?;
    eprintln!("bench: section {key} written to {}", path.display());
    Ok(())
}

fn doc_path() -> PathBuf {
    util::root().join("docs/benchmarks.md")
}

fn begin_marker(key: &str) -> String {
    format!("<!-- bench:{key} begin -->")
}

fn end_marker(key: &str) -> String {
    format!("<!-- bench:{key} end -->")
}

/// The document with `key`'s part set to `body`: the intro, then every section's part in the
/// order of [`SECTIONS`], each taken from `old` unless it is `key`. Text of `old` outside the
/// markers is not kept (the document is generated).
fn splice(old: &str, key: &str, body: &str) -> String {
    let mut doc = String::from(INTRO);
    for (k, _) in SECTIONS {
        let part = if k == key {
            Some(body.trim().to_string())
        } else {
            let (b, e) = (begin_marker(k), end_marker(k));
            old.find(&b).and_then(|start| {
                let from = start + b.len();
                old[from..]
                    .find(&e)
                    .map(|len| old[from..from + len].trim().to_string())
            })
        };
        if let Some(part) = part {
            doc.push_str(&format!(
                "\n{}\n{part}\n{}\n",
                begin_marker(k),
                end_marker(k)
            ));
        }
    }
    doc
}

/// One paragraph describing the machine and the software measured: CPU, cores, memory,
/// kernel, OS, the versions of every contender and client, the commit, the date and the load.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or("?".into(), |kib| format!("{:.0}", kib / 1024.0 / 1024.0));
    let os = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|o| {
            o.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown OS".into());
    let load = fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let commit = first_line(
        "git",
        &[
            "-C",
            &util::root().to_string_lossy(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    // The document this run writes is not a change to what is measured.
    let dirty = !first_line(
        "git",
        &[
            "-C",
            &util::root().to_string_lossy(),
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!docs/benchmarks.md",
        ],
    )
    .is_empty();
    let pg_bin = agentgate_tests::pg::pg_bindir();
    format!(
        "machine: {cpu}, {cores} cores, {mem_gib} GiB, kernel {kernel}, {os}; load average \
         {load} when the section started  \n\
         software: agentgate {commit}{dirty} (release), {postgres}, {pgbench}, {haproxy}, \
         {pgbouncer}, {rustc}  \n\
         date: {date}\n",
        kernel = first_line("uname", &["-r"]),
        dirty = if dirty {
            " with uncommitted changes"
        } else {
            ""
        },
        postgres = first_line(&pg_bin.join("postgres").to_string_lossy(), &["--version"]),
        pgbench = first_line(&pg_bin.join("pgbench").to_string_lossy(), &["--version"]),
        haproxy = first_line("haproxy", &["-v"]),
        pgbouncer = first_line("pgbouncer", &["--version"]),
        rustc = first_line("rustc", &["--version"]),
        date = first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    )
}

/// The first line a command prints (stdout, else stderr), or `<program>: not found`.
pub fn first_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(_) => format!("{program}: not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_one_part_and_keeps_the_others_in_order() {
        let doc = splice("", "record", "## R\nrecord v1");
        let doc = splice(&doc, "capture", "## C\ncapture v1");
        let doc = splice(&doc, "record", "## R\nrecord v2");
        assert!(doc.starts_with(INTRO));
        assert!(!doc.contains("record v1"));
        let c = doc.find("capture v1").expect("capture kept");
        let r = doc.find("record v2").expect("record replaced");
        assert!(c < r, "sections in document order:\n{doc}");
        assert_eq!(doc.matches("<!-- bench:record begin -->").count(), 1);
        assert!(
            !doc.contains("bench:postgres"),
            "no part for a section never run"
        );
    }
}
