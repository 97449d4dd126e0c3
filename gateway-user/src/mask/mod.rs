//! Inline masking of sensitive values in what the target sends back: result rows, COPY data,
//! error and notice texts. Rules come from the policy (`mask:` rules); a session compiles the ones
//! that apply to it into a [`plan::Plan`].
pub mod catalog;
pub mod copy;
pub mod detect;
pub mod hide;
pub mod notice;
pub mod plan;
pub mod row;
pub mod rules;
