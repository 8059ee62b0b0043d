//! Counting each connection's open requests, from the request until its response body ends.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::conn::{ConnInfo, OpenRequest};

/// Counts each connection's open requests (until their response bodies end). Handlers read who
/// called from the same [`ConnInfo<I>`] ([`super::caller_of`]).
pub struct TrackRequests<I>(PhantomData<fn() -> I>);

impl<I> TrackRequests<I> {
    pub(super) fn new() -> Self {
        TrackRequests(PhantomData)
    }
}

impl<I> Clone for TrackRequests<I> {
    fn clone(&self) -> Self {
        TrackRequests::new()
    }
}

impl<S, I> tower::Layer<S> for TrackRequests<I> {
    type Service = Tracked<S, I>;

    fn layer(&self, inner: S) -> Tracked<S, I> {
        Tracked {
            inner,
            _info: PhantomData,
        }
    }
}

/// The service [`TrackRequests`] makes.
pub struct Tracked<S, I> {
    inner: S,
    _info: PhantomData<fn() -> I>,
}

impl<S: Clone, I> Clone for Tracked<S, I> {
    fn clone(&self) -> Self {
        Tracked {
            inner: self.inner.clone(),
            _info: PhantomData,
        }
    }
}

impl<S, I, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Tracked<S, I>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    I: Clone + Send + Sync + 'static,
{
    type Response = http::Response<InFlight<ResBody>>;
    type Error = S::Error;
    type Future = Tracking<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // Read where tonic put it, not moved into extensions of their own: each would be an
        // allocation per call, and another to free.
        let open = request
            .extensions()
            .get::<ConnInfo<I>>()
            .map(|info| info.activity.clone().begin());
        Tracking {
            response: self.inner.call(request),
            open,
        }
    }
}

pin_project_lite::pin_project! {
    /// A response on its way, its request counted as open.
    pub struct Tracking<F> {
        #[pin]
        response: F,
        open: Option<OpenRequest>,
    }
}

impl<F, B, E> Future for Tracking<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<InFlight<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.response.poll(cx));
        let open = this.open.take();
        Poll::Ready(response.map(|r| r.map(|body| InFlight { body, _open: open })))
    }
}

pin_project_lite::pin_project! {
    /// A response body whose request counts as open until the body is dropped.
    pub struct InFlight<B> {
        #[pin]
        body: B,
        _open: Option<OpenRequest>,
    }
}

impl<B: http_body::Body> http_body::Body for InFlight<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
