use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use palisade_core::{BoxError, Error};
use pin_project::pin_project;
use tokio::time::{Sleep, sleep};

/// The response future of [`Fault`](crate::Fault): an optional injected delay,
/// then the inner call or the injected result.
///
/// The timer is held inside the future (no allocation); a call without a delay
/// holds none.
#[pin_project]
pub struct ResponseFuture<F, Res> {
    #[pin]
    delay: Option<Sleep>,
    #[pin]
    state: State<F, Res>,
}

#[pin_project(project = StateProj)]
enum State<F, Res> {
    Forward {
        #[pin]
        future: F,
    },
    Done {
        result: Option<Result<Res, Error>>,
    },
}

impl<F, Res> std::fmt::Debug for ResponseFuture<F, Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, Res> ResponseFuture<F, Res> {
    pub(crate) fn forward(delay: Option<Duration>, future: F) -> Self {
        Self {
            delay: delay.map(sleep),
            state: State::Forward { future },
        }
    }

    pub(crate) fn done(delay: Option<Duration>, result: Result<Res, Error>) -> Self {
        Self {
            delay: delay.map(sleep),
            state: State::Done {
                result: Some(result),
            },
        }
    }
}

impl<F, Res, E> Future for ResponseFuture<F, Res>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError> + 'static,
{
    type Output = Result<Res, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(delay) = this.delay.as_mut().as_pin_mut() {
            ready!(delay.poll(cx));
            this.delay.set(None);
        }
        match this.state.project() {
            StateProj::Forward { future } => future.poll(cx).map_err(Error::from_service),
            StateProj::Done { result } => match result.take() {
                Some(result) => Poll::Ready(result),
                // Polled again after it finished.
                None => Poll::Pending,
            },
        }
    }
}
