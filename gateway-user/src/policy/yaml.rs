//! Reading one policy file's YAML: the parser's settings, and its errors as line, column and a
//! message that names the list entry (target, workload, rule, identity provider) they are in.
//!
//! The parser is serde-saphyr. serde_yaml is deprecated upstream; its forks serde_yaml_ng and
//! serde_norway still parse with unsafe-libyaml (libyaml machine-translated to unsafe Rust,
//! itself archived: RUSTSEC-2024-0449) or a fork of it; serde_yml is deprecated and was unsound
//! (RUSTSEC-2025-0068). serde-saphyr is maintained, has no unsafe code (`forbid(unsafe_code)`),
//! and gives every error a line and column, also the errors of our own `Deserialize`
//! implementations (addresses, algorithms, patterns).

use std::{borrow::Cow, collections::HashMap};

use serde::{de::DeserializeOwned, de::IgnoredAny, Deserialize};
use serde_saphyr::{
    Error, Localizer, Location, MergeKeyPolicy, MessageFormatter, SnippetMode, Spanned,
    UserMessageFormatter,
};

/// A YAML file that could not be read into the expected type.
#[derive(Debug)]
pub(super) struct YamlError {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// Parses one YAML document into `T`.
pub(super) fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str_with_options(text, options()).map_err(|e| {
        let at = e
            .location()
            .filter(|l| *l != Location::UNKNOWN)
            .map(|l| (to_usize(l.line()), to_usize(l.column())));
        let message = e.render_with_options(serde_saphyr::render_options! {
            formatter: &PlainMessages,
            snippets: SnippetMode::Off,
        });
        YamlError {
            line: at.map(|(l, _)| l),
            column: at.map(|(_, c)| c),
            message: name_the_entry(text, at, message),
        }
    })
}

/// The YAML the policy format has always meant (YAML 1.2, as serde_yaml read it): only
/// `true`/`false` are booleans (a `yes` or `on` is refused where a boolean belongs rather than
/// silently read as one), `<<` is an ordinary key (so a merge key is refused as an unknown field
/// instead of pulling in fields from elsewhere), and a repeated key is an error.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        merge_keys: MergeKeyPolicy::AsOrdinary,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// serde-saphyr's messages for people (not the ones for developers, which suggest parser
/// options), without their " at line L, column C": a [`super::load::Problem`] already starts
/// with file:line:column.
struct PlainMessages;

impl Localizer for PlainMessages {
    fn attach_location<'a>(&self, base: Cow<'a, str>, _: Location) -> Cow<'a, str> {
        base
    }
}

impl MessageFormatter for PlainMessages {
    fn localizer(&self) -> &dyn Localizer {
        self
    }

    fn format_message<'a>(&self, err: &'a Error) -> Cow<'a, str> {
        UserMessageFormatter.format_message(err)
    }
}

/// Line and column.
type Position = (usize, usize);

/// A list entry: what one is called in a message, and its name if it has one.
type Entry = (&'static str, Option<String>);

/// Says which list entry the error at `at` is in, by name, since that is what a person looks
/// for in the file. The file is read a second time for only its top-level keys and each entry's
/// position and name; if that fails too (a syntax error, an entry that is not a mapping), the
/// message stays as it is.
fn name_the_entry(text: &str, at: Option<Position>, message: String) -> String {
    let Some(at) = at else {
        return message;
    };
    match entry_at(text, at) {
        Some((kind, name)) => format!("{kind} `{name}`: {message}"),
        None => message,
    }
}

/// The kind and name of the list entry whose extent holds `at`: an entry reaches from its first
/// key to the next entry or top-level key.
fn entry_at(text: &str, at: Position) -> Option<(&'static str, String)> {
    #[derive(Deserialize)]
    struct Named {
        #[serde(default)]
        name: Option<String>,
    }
    // `Option`: an empty list (`rules:` and nothing after it) is no entries.
    #[derive(Deserialize)]
    struct Entries {
        #[serde(default)]
        targets: Option<Vec<Spanned<Named>>>,
        #[serde(default)]
        workloads: Option<Vec<Spanned<Named>>>,
        #[serde(default)]
        rules: Option<Vec<Spanned<Named>>>,
        #[serde(default)]
        identity_providers: Option<Vec<Spanned<Named>>>,
    }
    let keys: HashMap<Spanned<String>, IgnoredAny> =
        serde_saphyr::from_str_with_options(text, options()).ok()?;
    let entries: Entries = serde_saphyr::from_str_with_options(text, options()).ok()?;
    let position = |l: Location| (to_usize(l.line()), to_usize(l.column()));
    // Where each top-level key and each list entry starts; a top-level key names no entry.
    let mut starts: Vec<(Position, Option<Entry>)> = keys
        .keys()
        .map(|k| (position(k.referenced), None))
        .collect();
    // What one entry of each list is called in a message.
    let lists = [
        ("target", entries.targets),
        ("workload", entries.workloads),
        ("rule", entries.rules),
        ("identity provider", entries.identity_providers),
    ];
    for (kind, list) in lists {
        for entry in list.unwrap_or_default() {
            starts.push((position(entry.referenced), Some((kind, entry.value.name))));
        }
    }
    starts.sort_by_key(|(start, _)| *start);
    let (_, entry) = starts.into_iter().rev().find(|(start, _)| *start <= at)?;
    let (kind, name) = entry?;
    Some((kind, name?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        #[serde(default)]
        targets: Vec<Target>,
        #[serde(default)]
        rules: Vec<Target>,
        #[serde(default)]
        gateway: Option<Gateway>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Target {
        name: String,
        #[serde(default)]
        ports: Vec<u16>,
        #[serde(default)]
        tls: Option<bool>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Gateway {
        listen_port: u16,
    }

    fn err(text: &str) -> YamlError {
        from_str::<Doc>(text).unwrap_err()
    }

    #[test]
    fn errors_name_the_entry_they_are_in() {
        let text = "targets:\n  - name: a\n    ports: [1]\n  - name: b\n    ports: [70000]\nrules:\n  - {name: c, ports: [1]}\n  - {name: d, ports: [x]}\n";
        let e = err(text);
        assert_eq!((e.line, e.column), (Some(5), Some(13)), "{e:?}");
        assert!(e.message.starts_with("target `b`: "), "{e:?}");
        assert!(!e.message.contains("at line"), "{e:?}");
        let e = err(&text.replace("70000", "2"));
        assert_eq!(e.line, Some(8), "{e:?}");
        assert!(e.message.starts_with("rule `d`: "), "{e:?}");
    }

    #[test]
    fn errors_outside_entries_name_none() {
        // After the last target, in another top-level section.
        let e = err("targets:\n  - name: a\ngateway:\n  listen_port: x\n");
        assert_eq!(e.line, Some(4), "{e:?}");
        assert!(!e.message.contains("target `a`"), "{e:?}");
        // An unknown top-level key after a list.
        let e = err("targets:\n  - name: a\ncolour:\n  red: 1\n");
        assert!(e.message.contains("colour"), "{e:?}");
        assert!(!e.message.contains("target `a`"), "{e:?}");
        // A syntax error: a location, no entry.
        let e = err("targets:\n  - name: a\n    ports: [1\n");
        assert!(e.line.is_some() && e.column.is_some(), "{e:?}");
    }

    #[test]
    fn yaml_1_2_as_before() {
        // YAML 1.1 booleans are not booleans.
        let e = err("targets:\n  - name: a\n    tls: yes\n");
        assert_eq!(e.line, Some(3), "{e:?}");
        assert!(from_str::<Doc>("targets:\n  - name: a\n    tls: true\n").is_ok());
        // A merge key is an unknown field, not a merge.
        let e = err("targets:\n  - &b {name: a, ports: [1]}\n  - <<: *b\n    name: c\n");
        assert_eq!(e.line, Some(3), "{e:?}");
        // A repeated key is an error.
        let e = err("targets:\n  - name: a\n    name: b\n");
        assert_eq!(e.line, Some(3), "{e:?}");
    }
}
