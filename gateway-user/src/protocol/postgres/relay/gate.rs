//! The one gate every statement passes, whichever message carries it (a simple Query, an
//! Execute of a bound portal, a FunctionCall): deny rules → masking's refusals → COPY masking →
//! approval by people → durable intent (on record before it is forwarded). Each message kind
//! then forwards, or refuses in its own protocol terms; the order of the checks is here, once.

use super::*;

/// A statement about to be run, as the gate judges it.
pub(super) struct Action<'a> {
    pub stmt: RuleStatement<'a>,
    pub classified: &'a Classified,
    pub text: &'a str,
    /// What approvers see and a retry must repeat.
    pub params: &'a Params,
    /// Whether the statement can be a COPY whose rows need their own masking (not a
    /// FunctionCall).
    pub copy: bool,
}

/// A refusal: the rule, and a text instead of the standard one.
pub(super) type Refusal = (String, Option<String>);

pub(super) struct Judged {
    pub refusal: Option<Refusal>,
    /// The COPY masking plan of an allowed COPY.
    pub copy: Option<Arc<CopyMask>>,
}

impl Upward<'_, '_> {
    /// Deny rules, masking's refusals, COPY masking, and last approval: people are asked only
    /// about a statement nothing else refuses.
    pub(super) async fn judge<R, W>(
        &mut self,
        a: &Action<'_>,
        from: &mut BufReader<R>,
        to: &mut W,
    ) -> Result<Judged, RelayError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut refusal = match self.decide(&a.stmt) {
            Some(d) => Some(d),
            None => self.mask_denial(a.classified).await?,
        }
        .map(|d| (d.rule, d.message));
        let mut copy = None;
        if refusal.is_none() && a.copy {
            match self.copy_mask(a.text, a.classified).await {
                Ok(c) => copy = c,
                Err((rule, message)) => refusal = Some((rule, Some(message))),
            }
        }
        if refusal.is_none() {
            refusal = self
                .approval(&a.stmt, a.params, from, to)
                .await?
                .map(|d| (d.rule, d.message));
        }
        Ok(Judged { refusal, copy })
    }

    /// Durable intent: a statement the gate lets through is on record before it is forwarded;
    /// if the record cannot take it, it is refused instead (`rec` says so). Then the approval
    /// it used, if any, is settled as forwarded or not.
    pub(super) async fn intend(
        &mut self,
        rec: &mut Statement,
        classified: &Classified,
        refusal: &mut Option<Refusal>,
    ) {
        if refusal.is_none() && !self.on_record_first(rec, classified).await {
            let (rule, message) = unrecorded(rec);
            *refusal = Some((rule.unwrap_or_default(), message));
        }
        self.settle_approval(refusal.is_none());
    }
}
