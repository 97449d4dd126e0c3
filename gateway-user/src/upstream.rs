//! The names protocol handlers and the proxy use for their upstream sockets. The factory itself
//! lives in `net/` (one place for every socket the gateway opens).

pub use crate::net::{in_netns, Connect};
