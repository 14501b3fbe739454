//! A client connection handed to a tunnel after `101 Switching Protocols` (WebSocket): from
//! hyper's server, its `OnUpgrade`, or from floodgate's HTTP/1.1 engine, which sends its
//! connection once the 101 is written. A module of its own because the engine (`h1`) and the
//! phases (`session`) both use it, and the engine calls the phases.

use std::sync::{Arc, Mutex};

use http::Request;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::oneshot,
};

/// A client connection after the switch.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
pub type Upgraded = Box<dyn Io>;

/// Put by the engine in an upgrade request's extensions: the receiving end of its connection.
/// Extensions must be `Clone`: the receiver is taken out once.
#[derive(Clone)]
pub struct FromEngine(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl FromEngine {
    /// The extension, and where the engine sends its connection after the 101.
    pub fn new() -> (Self, oneshot::Sender<Upgraded>) {
        let (tx, rx) = oneshot::channel();
        (Self(Arc::new(Mutex::new(Some(rx)))), tx)
    }

    fn take(&self) -> Option<oneshot::Receiver<Upgraded>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// The client's side of an upgrade, resolved once the backend agreed and the 101 is out.
pub enum ClientUpgrade {
    Hyper(hyper::upgrade::OnUpgrade),
    Engine(oneshot::Receiver<Upgraded>),
}

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error("the client connection ended before the switch")]
    Gone,
}

impl ClientUpgrade {
    /// The upgrade of whichever server side read `req`.
    pub fn of<B>(req: &mut Request<B>) -> Self {
        match req
            .extensions_mut()
            .remove::<FromEngine>()
            .and_then(|e| e.take())
        {
            Some(rx) => Self::Engine(rx),
            None => Self::Hyper(hyper::upgrade::on(req)),
        }
    }

    pub async fn connection(self) -> Result<Upgraded, UpgradeError> {
        match self {
            Self::Hyper(on) => Ok(Box::new(hyper_util::rt::TokioIo::new(on.await?))),
            Self::Engine(rx) => rx.await.map_err(|_| UpgradeError::Gone),
        }
    }
}
