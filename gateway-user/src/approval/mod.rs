//! Just-in-time human approval of high-risk commands, protocol-neutral: a protocol handler
//! submits a [`NewRequest`] for a statement an approval rule holds, and either waits for its
//! decision (`hold`) or refuses at once and lets an identical retry through once it is approved
//! (`deny_and_retry`). People decide through the local admin socket or the HTTP admin API;
//! webhooks tell them there is something to decide. Requests live in the record database, so a
//! restart neither loses nor silently approves them.

mod model;
mod notify;
mod service;
mod store;
#[cfg(test)]
mod tests;

pub use model::{
    Action, ApprovalSpec, Approver, Mode, NewRequest, Request, State, Verdict, Webhook,
    WebhookFormat,
};
pub use notify::Notifier;
pub use service::{ApprovalError, Approvals, Gate, LIST_LIMIT};
