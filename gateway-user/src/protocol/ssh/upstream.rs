//! The target's side of an SSH session: the gateway logs in as the agent's login with a
//! credential only it holds (a per-session user certificate, or a static key), after checking
//! the target's host key against the operator's known_hosts (fail closed).

use std::{net::SocketAddr, sync::Arc, time::SystemTime};

use russh::{
    client::{self, Handle},
    keys::PrivateKeyWithHashAlg,
};
use tokio::net::TcpStream;

use super::keys::{self, HostKeyCheck, PublicKeyOrCertificate, UserExtensions};
use crate::policy::{SshTarget, SshUpstreamAuth};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Key(#[from] keys::KeyError),
    #[error("the target's host key is not the one known for it: {0}")]
    HostKey(String),
    #[error("ssh to the target: {0}")]
    Ssh(#[from] russh::Error),
    #[error("the target refused the gateway's credential for login `{0}`")]
    Refused(String),
}

/// Checks the target's host key (a refusal is logged with its reason) and hands connections
/// to `ssh -R` listeners to the session.
pub struct TargetSide {
    check: Arc<HostKeyCheck>,
    names: Vec<String>,
    /// Where connections to listeners the gateway asked for (`ssh -R`) go: the session's task.
    forwarded: tokio::sync::mpsc::Sender<Forwarded>,
}

/// A connection the target accepted on a listener asked for with `ssh -R`.
pub struct Forwarded {
    pub channel: russh::Channel<client::Msg>,
    pub connected: (String, u32),
    pub originator: (String, u32),
}

impl client::Handler for TargetSide {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match self.check.check(&self.names, key) {
            Ok(()) => Ok(true),
            Err(e) => {
                // russh reports only "unknown key"; the reason is in the log.
                tracing::warn!("target host key refused: {e}");
                Ok(false)
            }
        }
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        // Only listeners the session asked for exist; the session's task serves the channel
        // (dropping the handle refuses it when the session is gone).
        let f = Forwarded {
            channel,
            connected: (connected_address.to_string(), connected_port),
            originator: (originator_address.to_string(), originator_port),
        };
        if self.forwarded.send(f).await.is_ok() {
            reply.accept().await;
        }
        Ok(())
    }
}

/// The names the target's host key may be known by: the target's name, the certificate names
/// the agents see, and its address as OpenSSH writes it.
fn known_names(target: &str, settings: &SshTarget, dst: SocketAddr) -> Vec<String> {
    let host_names = match &settings.host_key {
        crate::policy::SshHostKey::Certified { names, .. } => names.as_slice(),
        crate::policy::SshHostKey::Imported { .. } => &[],
    };
    HostKeyCheck::names(target, host_names, dst)
}

/// Who the upstream login is for, named in the certificate's key id (the target's auth log
/// prints it: `Accepted publickey for deploy ... ID agentgate:<issuer>#<subject> session <id>`).
pub struct LoginFor<'a> {
    pub login: &'a str,
    pub issuer: &'a str,
    pub subject: &'a str,
    pub session: &'a str,
    /// A rule lets the agent forward ports: the certificate permits it (the gateway still
    /// judges every forward).
    pub forwarding: bool,
}

/// Logs in to the target over `stream` as `who.login`.
pub async fn login(
    stream: TcpStream,
    target: &str,
    settings: &SshTarget,
    dst: SocketAddr,
    who: &LoginFor<'_>,
    forwarded: tokio::sync::mpsc::Sender<Forwarded>,
) -> Result<Handle<TargetSide>, UpstreamError> {
    let check = Arc::new(HostKeyCheck::load(&settings.known_hosts)?);
    let mut preferred = russh::Preferred::default();
    // russh's client asks for plain host keys only unless told: a target known only through
    // its host CA must be asked for its certificate.
    if check.has_cert_authorities() {
        preferred.host_key_certificates =
            std::borrow::Cow::Owned(HostKeyCheck::certificate_algorithms());
    }
    let side = TargetSide {
        check,
        names: known_names(target, settings, dst),
        forwarded,
    };
    let config = Arc::new(client::Config {
        nodelay: true,
        preferred,
        ..Default::default()
    });
    let mut handle = match client::connect_stream(config, stream, side).await {
        Ok(h) => h,
        Err(russh::Error::UnknownKey) => {
            return Err(UpstreamError::HostKey(
                "refused by the known_hosts check".into(),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let hash = handle.best_supported_rsa_hash().await?.flatten();
    let ok = match &settings.upstream_auth {
        SshUpstreamAuth::UserCa { ca_key } => {
            let ca = keys::load_private_key(ca_key)?;
            let key = keys::session_key();
            let key_id = format!(
                "agentgate:{}#{} session {}",
                who.issuer, who.subject, who.session
            );
            let cert = keys::user_certificate(
                &ca,
                key.public_key(),
                who.login,
                &key_id,
                SystemTime::now(),
                settings.user_cert_ttl,
                &UserExtensions {
                    port_forwarding: who.forwarding,
                    ..UserExtensions::default()
                },
            )?;
            handle
                .authenticate_openssh_cert(who.login, Arc::new(key), cert)
                .await?
        }
        SshUpstreamAuth::StaticKey { key } => {
            let key = keys::load_private_key(key)?;
            let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
            handle.authenticate_publickey(who.login, key).await?
        }
    };
    if !ok.success() {
        return Err(UpstreamError::Refused(who.login.to_string()));
    }
    Ok(handle)
}
