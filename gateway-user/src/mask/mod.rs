//! Masking of sensitive values, whatever protocol carries them: the `mask:` rules of the policy
//! ([`rules`]), what applies to one session ([`plan::Plan`]), the value detectors ([`detect`])
//! and the strategies that replace a value (redact, partial, hash, null). A protocol applies
//! them to its own messages: PostgreSQL's result rows, COPY data, errors and notices are in
//! protocol/postgres/mask/. This module imports no protocol.
pub mod detect;
pub mod plan;
pub mod rules;
// No protocol masks a byte stream yet (SSH output and HTTP bodies will); until one does, only
// the tests use it, and this expectation fails the build once it is used.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "for the stream protocols to come")
)]
pub mod stream;
