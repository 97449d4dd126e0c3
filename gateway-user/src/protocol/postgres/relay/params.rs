//! The parameter values of a Bind or FunctionCall, read once: as they are (for the retry key)
//! and as shown to approvers and kept on record.

use super::*;

/// The parameter values of a Bind, as text for the record: text-format values as they are,
/// binary ones as `\x` hex, each cut at [`PARAM_CAP`] bytes. Under a mask plan, binary values
/// are scanned by the detectors before they are hex-encoded (the record must not hold in hex
/// what it may not hold as text).
pub(super) fn bind_params(f: &mut Fields<'_>, plan: Option<&Plan>) -> Result<Params, CodecError> {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    let mut cut_any = false;
    let nformats = f.count()?;
    let mut formats = Vec::with_capacity(nformats.min(64));
    for _ in 0..nformats {
        formats.push(f.i16()?);
    }
    let n = f.count()?;
    let mut params = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        let len = f.i32()?;
        if len < 0 {
            digest.update([i as u8, 2]);
            params.push(None);
            continue;
        }
        let value = f.take(len as usize)?;
        let binary = match formats.len() {
            0 => false,
            1 => formats[0] == 1,
            _ => formats.get(i).copied().unwrap_or(0) == 1,
        };
        // The whole value and its format: what "the same parameters" means for a retry.
        digest.update([i as u8, binary as u8]);
        digest.update((value.len() as u64).to_be_bytes());
        digest.update(value);
        let masked = match (binary, plan) {
            (true, Some(plan)) => {
                let mut hits = Vec::new();
                plan.detect_in_line(value, &mut hits, |r| r)
            }
            _ => None,
        };
        let value = masked.as_deref().unwrap_or(value);
        let cut = &value[..value.len().min(PARAM_CAP)];
        let mut s = if binary {
            bytea_hex(cut)
        } else {
            String::from_utf8_lossy(cut).into_owned()
        };
        if value.len() > PARAM_CAP {
            s.push('…');
            cut_any = true;
        }
        params.push(Some(s));
    }
    Ok(Params {
        shown: params,
        digest: digest.finalize().into(),
        cut: cut_any,
    })
}

/// The parameter values of a Bind or FunctionCall: as shown (and recorded), and as they are.
#[derive(Clone, Default)]
pub(super) struct Params {
    /// Each cut at [`PARAM_CAP`] bytes, binary ones as `\x` hex.
    pub(super) shown: Vec<Option<String>>,
    /// SHA-256 of every value in full with its format.
    pub(super) digest: [u8; 32],
    /// Some value is longer than what is shown.
    pub(super) cut: bool,
}
