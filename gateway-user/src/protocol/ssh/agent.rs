//! The agent's side of an SSH session: russh's server handler. It decides nothing itself: russh
//! runs it in its own task, which cannot borrow the proxy core, so every decision (a login, a
//! channel) is put to the session's task (`super::serve`) as an [`AgentEvent`] and this side
//! waits for the answer. What a channel carries afterwards reaches the session through the
//! channel object itself.
//!
//! A refused login's reason reaches the agent's client as the description of an SSH
//! `DISCONNECT` (OpenSSH prints `Received disconnect from …: <reason>`; asyncssh raises it):
//! a `USERAUTH_FAILURE` carries no text, and a client with no method left to try gives up on it
//! before reading anything after it. So the refused attempt is answered `USERAUTH_SUCCESS`
//! immediately followed, in the same write and before any other packet of the agent is read,
//! by the `DISCONNECT` ([`AgentSide::auth_succeeded`]): the connection ends there. No channel or
//! global request of a refused agent is served either way (each handler checks).

use std::borrow::Cow;

use russh::{
    server::{Auth, ChannelOpenHandle, Msg, Session},
    Channel, ChannelId, MethodKind, MethodSet,
};
use tokio::sync::{mpsc, oneshot};

/// How the agent tried to log in.
#[derive(Debug)]
pub enum Credential {
    /// No secret: the token comes from the workload's file, if its workload has one.
    None,
    /// The JWT as the password, or as the answer to the keyboard-interactive prompt.
    Secret(String),
}

pub enum AgentEvent {
    /// A login attempt, answered `Ok` when it is accepted, or with the reason it is not.
    Login {
        user: String,
        credential: Credential,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A new session channel (exec, shell, subsystem): the session accepts and serves it.
    Session {
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
    },
    /// A channel kind the gateway does not serve (forwarding, X11): refused and recorded.
    Refused { what: String },
    /// `ssh -R`: the target is asked to listen on `address:port` if a rule names it; the
    /// answer is the port it listens on.
    RemoteForward {
        address: String,
        port: u32,
        reply: oneshot::Sender<Option<u32>>,
    },
    /// A direct-tcpip channel (`ssh -L`, `-W`): served if a rule names the destination.
    Forward {
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        host: String,
        port: u32,
    },
}

pub struct AgentSide {
    events: mpsc::Sender<AgentEvent>,
    /// Whether the workload's token comes from its file (then `none` is the login to try).
    token_file: bool,
    /// Set once a login was put to the session: one attempt decides (the core admits a
    /// connection once).
    tried: bool,
    /// Why the login was refused, once it was: sent as the disconnect's description.
    refused: Option<String>,
}

impl AgentSide {
    pub fn new(events: mpsc::Sender<AgentEvent>, token_file: bool) -> Self {
        Self {
            events,
            token_file,
            tried: false,
            refused: None,
        }
    }

    /// The methods that can still succeed: the agent's own keys never can.
    fn methods(&self) -> MethodSet {
        if self.token_file {
            MethodSet::from(&[MethodKind::None][..])
        } else {
            MethodSet::from(&[MethodKind::Password, MethodKind::KeyboardInteractive][..])
        }
    }

    fn reject(&self) -> Auth {
        Auth::Reject {
            proceed_with_methods: Some(self.methods()),
            partial_success: false,
        }
    }

    async fn login(&mut self, user: &str, credential: Credential) -> Result<Auth, russh::Error> {
        if self.tried {
            return Ok(Auth::Reject {
                proceed_with_methods: None,
                partial_success: false,
            });
        }
        self.tried = true;
        let (reply, answer) = oneshot::channel();
        let event = AgentEvent::Login {
            user: user.to_string(),
            credential,
            reply,
        };
        if self.events.send(event).await.is_err() {
            return Err(russh::Error::Disconnect);
        }
        match answer.await {
            Ok(Ok(())) => Ok(Auth::Accept),
            // Accepted only to carry the reason: `auth_succeeded` disconnects with it at once.
            Ok(Err(reason)) => {
                self.refused = Some(reason);
                Ok(Auth::Accept)
            }
            Err(_) => Ok(Auth::Reject {
                proceed_with_methods: None,
                partial_success: false,
            }),
        }
    }

    /// Whether the login was refused: nothing is served then (the connection is ending).
    fn is_refused(&self) -> bool {
        self.refused.is_some()
    }

    async fn refused(&self, what: String) {
        let _ = self.events.send(AgentEvent::Refused { what }).await;
    }
}

/// The prompt an agent answers with its token under keyboard-interactive.
const TOKEN_PROMPT: &str = "agentgate token: ";

impl russh::server::Handler for AgentSide {
    type Error = russh::Error;

    /// Right after `USERAUTH_SUCCESS` is written: a refused login is disconnected here, with its
    /// reason, before the agent's next packet is read.
    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some(reason) = &self.refused {
            session.disconnect(russh::Disconnect::NoMoreAuthMethodsAvailable, reason, "en")?;
        }
        Ok(())
    }

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        if self.token_file {
            return self.login(user, Credential::None).await;
        }
        Ok(self.reject())
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        if self.token_file {
            return Ok(self.reject());
        }
        self.login(user, Credential::Secret(password.to_string()))
            .await
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        if self.token_file {
            return Ok(self.reject());
        }
        let answer = response.and_then(|mut r| r.next()).map(|b| b.to_vec());
        match answer {
            None => Ok(Auth::Partial {
                name: Cow::Borrowed("agentgate"),
                instructions: Cow::Borrowed("Answer with the agent's identity token."),
                prompts: Cow::Owned(vec![(Cow::Borrowed(TOKEN_PROMPT), false)]),
            }),
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(token) => self.login(user, Credential::Secret(token)).await,
                Err(_) => Ok(self.reject()),
            },
        }
    }

    /// The agent's own keys are never an identity here: they would prove only that the agent
    /// holds a key, which is what the gateway exists to stop relying on.
    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.reject())
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.reject())
    }

    async fn auth_openssh_certificate(
        &mut self,
        _user: &str,
        _certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        Ok(self.reject())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.is_refused() {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        // Dropped (the session is gone): the handle refuses the channel on drop.
        let _ = self
            .events
            .send(AgentEvent::Session { channel, reply })
            .await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.is_refused() {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        // Dropped (the session is gone): the handle refuses the channel on drop.
        let _ = self
            .events
            .send(AgentEvent::Forward {
                channel,
                reply,
                host: host.to_string(),
                port,
            })
            .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused("an X11 channel".into()).await;
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if self.is_refused() {
            return Ok(false);
        }
        let (reply, answer) = oneshot::channel();
        let event = AgentEvent::RemoteForward {
            address: address.to_string(),
            port: *port,
            reply,
        };
        if self.events.send(event).await.is_err() {
            return Ok(false);
        }
        match answer.await {
            Ok(Some(bound)) => {
                *port = bound;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused("agent forwarding".into()).await;
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused("X11 forwarding".into()).await;
        session.channel_failure(channel)
    }

    // Requests on a session channel reach the session through the channel itself
    // (`ChannelMsg`); here they are only acknowledged. A refused exec is answered in the
    // channel (a stderr line and exit status 126), as OpenSSH clients show it.
    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }
}
