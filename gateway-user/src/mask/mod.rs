//! Masking of sensitive values, whatever protocol carries them: the `mask:` rules of the policy
//! ([`rules`]), what applies to one session ([`plan::Plan`]), the value detectors ([`detect`])
//! and the strategies that replace a value (redact, partial, hash, null). A protocol applies
//! them to its own messages: PostgreSQL's result rows, COPY data, errors and notices are in
//! protocol/postgres/mask/. This module imports no protocol.
pub mod detect;
pub mod plan;
pub mod quiet;
pub mod rules;
pub mod stream;
