//! PostgreSQL's side of masking: the neutral rules, plan and detectors of [`crate::mask`]
//! applied to result rows ([`row`]), COPY data ([`copy`]), errors and notices ([`notice`],
//! [`hide`]), with the catalog lookups that tell where a result column comes from
//! ([`catalog`]) and the taint of statements that carry masked values without naming them
//! ([`taint`]).
pub mod catalog;
pub mod copy;
pub mod hide;
pub mod notice;
pub mod row;
pub mod taint;
